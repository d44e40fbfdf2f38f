"""The job folder of the Ray engine without Ray: manifests, shards, what a rerun keeps, the merge."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'faceflow[ray]')")

from faceflow.distributed import jobs
from faceflow.errors import ConfigError
from faceflow.types import Face, ImageResult


def _files(tmp_path: Path, n: int) -> list[Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    out = []
    for i in range(n):
        p = folder / f"{i:03d}.jpg"
        p.write_bytes(bytes([i]) * (i + 1))
        out.append(p)
    return out


def _results(paths: list[Path]) -> list[ImageResult]:
    """One face per image (box from its index), the third image failing."""
    out = []
    for p in paths:
        i = int(p.stem)
        if i % 3 == 2:
            out.append(ImageResult(str(p), error=f"{p}: cannot decode"))
        else:
            face = Face(np.array([i, i, i + 10, i + 10], np.float32), score=0.5 + i / 100, detector="yunet")
            face.embeddings["sface"] = np.full(4, i, np.float32)
            out.append(ImageResult(str(p), width=100, height=80, faces=[face]))
    return out


def _run(out: Path, files: list[Path], batch: int, *, only: set[int] | None = None) -> jobs.JobPlan:
    """Plan the job and commit the pending batches of ``batch`` inputs (those starting in ``only``)."""
    import pyarrow.parquet as pq

    plan = jobs.plan_job(out, files)
    pending = pq.read_table(plan.pending).to_pylist()
    for start in range(0, len(pending), batch):
        rows = pending[start:start + batch]
        if only is not None and rows[0]["index"] not in only:
            continue
        paths = [Path(os.fsdecode(r["path_bytes"])) for r in rows]
        jobs.write_batch(out / jobs.SHARDS_DIR, [r["index"] for r in rows], _results(paths), embeddings=True)
    return plan


def test_rerun_keeps_committed_batches_drops_torn_and_changed_ones(tmp_path: Path) -> None:
    files = _files(tmp_path, 10)
    out = tmp_path / "job"
    first = _run(out, files, 4, only={0, 8})  # batches 0-3 and 8-9 done, 4-7 "in flight" when killed
    assert (first.total, first.done) == (10, 0)
    shards = out / jobs.SHARDS_DIR
    (shards / "faces-000000000004.parquet").write_bytes(b"half")  # a batch killed between its two files
    second = jobs.plan_job(out, files)
    assert (second.done, second.dropped_shards) == (6, 1)
    assert not (shards / "faces-000000000004.parquet").exists()

    files[9].write_bytes(b"changed content")  # another size: its batch (8, 9) is redone
    third = jobs.plan_job(out, files)
    assert (third.done, third.dropped_shards) == (4, 1)
    import pyarrow.parquet as pq

    assert pq.read_table(third.pending).column("index").to_pylist() == [4, 5, 6, 7, 8, 9]


def test_a_run_killed_while_reconciling_still_redoes_the_changed_batch(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill while the shards are reconciled (here, an interrupt raised as the first shard is looked at)
    must not leave the new manifest beside the old shards: the rerun would then see no change and keep
    the results of content that is gone."""
    files = _files(tmp_path, 10)
    out = tmp_path / "job"
    _run(out, files, 4)
    files[9].write_bytes(b"changed content")
    real = jobs._kept_shards

    def killed(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "_kept_shards", killed)
    with pytest.raises(KeyboardInterrupt):
        jobs.plan_job(out, files)
    monkeypatch.setattr(jobs, "_kept_shards", real)
    again = jobs.plan_job(out, files)
    assert (again.done, again.dropped_shards) == (8, 1)


def test_rerun_with_other_analysis_settings_redoes_every_batch(tmp_path: Path) -> None:
    """Shards computed with other settings (stages, stage options, embeddings) are not this job's results."""
    import pyarrow.parquet as pq

    files = _files(tmp_path, 6)
    out = tmp_path / "job"
    plan = jobs.plan_job(out, files, settings="detect")
    rows = pq.read_table(plan.pending).to_pylist()
    jobs.write_batch(out / jobs.SHARDS_DIR, [r["index"] for r in rows], _results(files), embeddings=False)
    assert jobs.plan_job(out, files, settings="detect").done == 6
    other = jobs.plan_job(out, files, settings="detect,embed")
    assert (other.done, other.dropped_shards) == (0, 1)
    assert pq.read_table(other.pending).column("index").to_pylist() == list(range(6))
    assert jobs.plan_job(out, files, settings="detect").done == 0  # nothing was redone with these yet


def test_job_settings_name_what_changes_results_only() -> None:
    from faceflow.distributed.engine import job_settings
    from faceflow.pipeline import AnalyzerOptions

    base = AnalyzerOptions(stages=("detect", "landmarks"))
    assert job_settings(base, embeddings=False) == job_settings(
        AnalyzerOptions(stages=("detect", "landmarks"), threads=3, workers=2), embeddings=False)
    assert len({job_settings(base, embeddings=False), job_settings(base, embeddings=True),
                job_settings(base.with_values({"detector": "fast"}), embeddings=False),
                job_settings(base.with_values({"min_face": 0.1}), embeddings=False),
                job_settings(AnalyzerOptions(stages=("detect",)), embeddings=False)}) == 5


def test_records_merge_interleaved_shards_in_input_order(tmp_path: Path) -> None:
    files = _files(tmp_path, 12)
    out = tmp_path / "job"
    _run(out, files, 3, only={0, 6})  # 0-2 and 6-8 committed by a first run
    _run(out, files, 4)  # the rerun's batches: 3, 4, 5, 9 and 10, 11 (interleaving the first run's)
    records = list(jobs.iter_records(out))
    assert [r["index"] for r in records] == list(range(12))
    assert [r["path"] for r in records] == [str(f) for f in files]
    expected = [r.to_dict(embeddings=True) for r in _results(files)]
    for got, want in zip(records, expected, strict=True):
        got.pop("index")
        assert json.loads(json.dumps(got)) == json.loads(json.dumps(want))
    assert jobs.plan_job(out, files).done == 12


def test_manifest_lists_inputs_and_reads_lists_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = _files(tmp_path, 3)
    listing = tmp_path / "paths.txt"
    listing.write_text(f"# a comment\n{files[2]}\n\n{files[0]}\n")
    table = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"path": [str(files[1])]}), table)
    found = list(jobs.expand_inputs([str(listing), str(table), str(tmp_path / "in" / "00[01].jpg")]))
    assert found == [files[2], files[0], files[1], files[0], files[1]]
    n = jobs.write_manifest(found, tmp_path / "m.parquet", content_hash=True)
    rows = pq.read_table(tmp_path / "m.parquet").to_pylist()
    assert n == 5 and [r["index"] for r in rows] == list(range(5))
    assert rows[0]["size"] == 3 and rows[0]["path_bytes"] == os.fsencode(files[2]) and len(rows[0]["sha256"]) == 64
    with pytest.raises(ConfigError, match="matches no file"):
        list(jobs.expand_inputs([str(tmp_path / "nothing*.jpg")]))


def _commit_all(out: Path, plan: jobs.JobPlan, batch: int) -> None:
    import pyarrow.parquet as pq

    pending = pq.read_table(plan.pending).to_pylist()
    for start in range(0, len(pending), batch):
        rows = pending[start:start + batch]
        results = [ImageResult(os.fsdecode(r["path_bytes"]), width=10, height=10) for r in rows]
        jobs.write_batch(out / jobs.SHARDS_DIR, [r["index"] for r in rows], results, embeddings=False)


def test_annotated_names_are_the_in_process_ones_and_a_rename_redoes_the_batch(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from faceflow.outputs import ANNOTATED_DIR, MANIFEST, annotated_names, append_annotated_list, result_paths

    files = _files(tmp_path, 6)
    (tmp_path / "in" / "sub").mkdir()
    odd = tmp_path / "in" / "sub" / "x.gif"
    odd.write_bytes(b"gif")
    files += [odd, files[0]]  # another format (named .gif.png) and a file listed twice (named ~2)
    out = tmp_path / "job"
    folder = tmp_path / "in"

    def names() -> list[str]:
        rows = pq.read_table(out / jobs.MANIFEST_FILE, columns=["annotated"]).column(0).to_pylist()
        return [os.fsdecode(b) for b in rows]

    plan = jobs.plan_job(out, files, annotate=[folder])
    expected = [str(n) for n in annotated_names(result_paths([folder], files))]
    assert names() == expected and "sub/x.gif.png" in expected and "000~2.jpg" in expected
    assert (out / ANNOTATED_DIR / MANIFEST).read_bytes() == b""  # listed once written, as in process
    _commit_all(out, plan, 3)
    for n in expected:  # what the actors would have written, and listed
        (out / ANNOTATED_DIR / n).parent.mkdir(parents=True, exist_ok=True)
        (out / ANNOTATED_DIR / n).write_bytes(b"img")
        append_annotated_list(out / ANNOTATED_DIR, Path(n))
    assert jobs.plan_job(out, files, annotate=[folder]).done == len(files)  # same names: all kept
    assert jobs.plan_job(out, files).done == len(files)  # --no-annotate: kept, images left alone
    assert all((out / ANNOTATED_DIR / n).is_file() for n in expected)

    # Another input outside the folder moves the common folder up: every name changes, every batch
    # is redone, and the images of the old names are removed.
    other = tmp_path / "other" / "y.jpg"
    other.parent.mkdir()
    other.write_bytes(b"y")
    moved = jobs.plan_job(out, [*files, other], annotate=[folder])
    assert moved.done == 0 and moved.stale_annotated == len(set(expected))
    assert names() == [str(n) for n in annotated_names(result_paths([folder, other], [*files, other]))]
    assert names()[0] == "in/000.jpg"
    assert not any((out / ANNOTATED_DIR / n).exists() for n in expected)

    # Annotation asked after a run without it: the batches are redone to write their images.
    plain = tmp_path / "plain"
    _commit_all(plain, jobs.plan_job(plain, files), 3)
    assert jobs.plan_job(plain, files, annotate=[folder]).done == 0

    inside = out / ANNOTATED_DIR / "in" / "001.jpg"  # an input where annotated images go
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_bytes(b"x")
    with pytest.raises(ConfigError, match="where annotated images are written"):
        jobs.plan_job(out, [*files, inside], annotate=[folder])


_NAME_PARTS = st.sampled_from(["a", "A", "b", "a~2", "x.gif", "x.gif.png", "X.GIF", "é", "sub"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_NAME_PARTS, min_size=1, max_size=3), max_size=30), st.integers(0, 5))
def test_names_kept_on_disk_are_the_names_kept_in_memory(parts: list[list[str]], limit: int) -> None:
    """Past its limit the key set moves to SQLite; the names given out (``~2`` suffixes, case-blind
    clashes, other formats) stay exactly those of a plain set."""
    from faceflow.outputs import annotated_names, iter_annotated_names

    rel = [Path(*p[:-1], p[-1] + ".jpg") if i % 2 else Path(*p) for i, p in enumerate(parts)]
    taken = jobs.SpillingKeySet(limit)
    try:
        assert list(iter_annotated_names(rel, taken)) == annotated_names(rel)
        assert taken.spilled == (len(rel) > limit)
    finally:
        taken.close()


def test_naming_a_manifest_with_names_on_disk_gives_the_same_manifest(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    files = _files(tmp_path, 6)
    files += [files[0], files[1]]  # listed twice: ~2 names, found in the on-disk set
    out = tmp_path / "job"
    jobs.plan_job(out, files, annotate=[tmp_path / "in"])
    manifest = out / jobs.MANIFEST_FILE
    before = pq.read_table(manifest).to_pylist()
    jobs.name_annotated(manifest, [tmp_path / "in"], out, memory_keys=2)
    assert pq.read_table(manifest).to_pylist() == before
