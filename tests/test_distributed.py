"""The Ray engine on real models and LFW images: same JSON as the in-process engine, resumable jobs,
a killed worker and a killed driver, idempotent enrolment into PostgreSQL, clustering by components.

A two-node Ray cluster is started on loopback for the module (``ray start --head`` and a second
``ray start --address``, one CPU each, their own temporary folder) and stopped at the end by killing
exactly the processes it started; the tests skip, saying why, when Ray is missing or cannot start.
The driver-kill test starts its own local runtime (no ``--address``), as a user's run would.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import datasets_root

LFW = datasets_root() / "lfw"
SRC = Path(__file__).resolve().parents[1] / "src"
START_TIMEOUT = 90
JOB_TIMEOUT = 240
KILL_IMAGES = 100
"""Images of the kill tests (batches of 2): enough that a kill lands mid-job on a fast machine too."""

pytestmark = pytest.mark.skipif(not LFW.is_dir(), reason=f"LFW not found at {LFW}")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", COLUMNS="400", **extra)
    return env


def _lfw_images(n: int) -> list[Path]:
    """The first ``n`` LFW images in folder order (deterministic)."""
    out: list[Path] = []
    for person in sorted(LFW.iterdir()):
        out.extend(sorted(person.glob("*.jpg")))
        if len(out) >= n:
            break
    return out[:n]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_tree(marker: str) -> None:
    """Kill the processes whose command line names ``marker`` (our cluster's own folder), or Ray
    processes whose ``RAY_TMPDIR`` or open log files lie in it, with all their descendants: exactly
    what this module started, never another user's Ray."""
    import psutil

    roots = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmdline = p.info["cmdline"] or []
            ours = any(marker in part for part in cmdline)
            if not ours and cmdline and cmdline[0].startswith("ray::"):  # agents retitle themselves "ray::..."
                ours = marker in p.environ().get("RAY_TMPDIR", "") or any(marker in f.path for f in p.open_files())
            if ours:
                roots.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    victims = {p.pid: p for r in roots for p in [r, *_children(r)]}
    for p in victims.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(list(victims.values()), timeout=10)


def _children(p: object) -> list[object]:
    import psutil

    try:
        return list(p.children(recursive=True))  # type: ignore[attr-defined]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[tuple[str, str]]:
    """(address, temporary folder) of a two-node Ray cluster on 127.0.0.1 (one CPU per node)."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'faceflow[ray]')")
    ray_bin = Path(sys.executable).with_name("ray")
    temp = tempfile.mkdtemp(prefix="ffray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        for args in (["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}",
                      "--object-store-memory=200000000"],
                     [f"--address={address}", "--object-store-memory=100000000"]):
            done = subprocess.run([str(ray_bin), "start", *args, *common], env=_env(), capture_output=True,
                                  text=True, timeout=START_TIMEOUT)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-800:] or done.stdout[-800:])
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        _kill_tree(temp)
        shutil.rmtree(temp, ignore_errors=True)
        pytest.skip(f"a local Ray cluster could not start: {exc}")
    try:
        yield address, temp
    finally:
        _kill_tree(temp)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def cluster(ray_cluster: tuple[str, str]) -> str:
    return ray_cluster[0]


def _faceflow(*args: str, timeout: float = JOB_TIMEOUT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faceflow.cli", *args], env=_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _close(a: object, b: object, tol: float = 1e-4) -> bool:
    """Equal JSON values, numbers up to ``tol`` (float round-off between thread counts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b


def _check_exactly_once(out: Path, expected: list[str]) -> None:
    """Every input once in the kept shards and once in faces.jsonl, in input order."""
    import pyarrow.parquet as pq

    indices = np.concatenate([pq.read_table(p, columns=["index"]).column(0).to_numpy()
                              for p in (out / "shards").glob("images-*.parquet")])
    assert sorted(indices.tolist()) == list(range(len(expected)))
    assert [r["path"] for r in _records(out / "faces.jsonl")] == expected


# -- 1. same results as the in-process engine; Parquet; rerun ---------------------------------------


def _annotated(out: Path) -> dict[str, np.ndarray]:
    """The annotated images under ``out/annotated`` by relative name, decoded."""
    from PIL import Image

    root = out / "annotated"
    return {str(p.relative_to(root)): np.asarray(Image.open(p).convert("RGB")) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".faceflow-annotated"}



def test_ray_engine_gives_the_in_process_json_and_resumes(cluster: str, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = _lfw_images(14)
    broken = tmp_path / "in" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"not a jpeg")
    changing = tmp_path / "in" / "changing.jpg"
    shutil.copy(images[0], changing)
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{p}\n" for p in images[:6]))
    pattern = str(LFW / "Aaron_[EGP]*" / "*.jpg")  # a glob (Aaron_Eckhart's photo is also listed: twice)
    inputs = [str(listed), pattern, str(tmp_path / "in")]
    common = ["--stages", "detect,landmarks,pose,attributes", "--embeddings"]  # annotated images too

    local = _faceflow("analyze", *[str(p) for p in images[:6]], *sorted(glob.glob(pattern)), str(tmp_path / "in"),
                      "-o", str(tmp_path / "local"), *common)
    assert local.returncode == 1, local.stderr  # the broken file fails in both engines
    ray_run = _faceflow("analyze", *inputs, "-o", str(tmp_path / "ray"), "--engine", "ray", "--address", cluster,
                        "--batch-size", "4", *common)
    assert ray_run.returncode == 1, ray_run.stderr
    expected, got = _records(tmp_path / "local" / "faces.jsonl"), _records(tmp_path / "ray" / "faces.jsonl")
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    assert len(got) == 14 and sum(len(r["faces"]) for r in got) >= 12  # type: ignore[arg-type]
    assert all(_close(a, b) for a, b in zip(expected, got, strict=True))
    assert next(r for r in got if r["path"] == str(broken))["error"]

    # Parquet: one row per face, the embedding as a fixed-size list equal to the JSON's.
    faces = [row for p in sorted((tmp_path / "ray" / "shards").glob("faces-*.parquet"))
             for row in pq.read_table(p).to_pylist()]
    assert len(faces) == sum(len(r["faces"]) for r in got)  # type: ignore[arg-type]
    schema = pq.read_schema(next((tmp_path / "ray" / "shards").glob("faces-*.parquet")))
    kind = schema.field("embedding_sface").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 128 and kind.value_type == pa.float32()
    first = faces[0]
    record = next(r for r in got if r["path"] == first["path"])
    assert np.allclose(first["embedding_sface"], record["faces"][0]["embeddings"]["sface"], atol=1e-6)  # type: ignore[index]
    manifest = pq.read_table(tmp_path / "ray" / "manifest.parquet").to_pylist()
    assert [m["path"] for m in manifest] == [r["path"] for r in got]
    assert manifest[0]["size"] == images[0].stat().st_size and manifest[0]["sha256"] is None

    # The actors wrote the annotated images the in-process engine writes: same names, same pixels.
    drawn = _annotated(tmp_path / "ray")
    assert drawn.keys() == _annotated(tmp_path / "local").keys() and len(drawn) == 13  # all but the broken file
    for name, image in _annotated(tmp_path / "local").items():
        assert np.abs(image.astype(np.int16) - drawn[name]).mean() < 0.5, name
    listed = "annotated/.faceflow-annotated"  # in the order the actors wrote them
    assert sorted((tmp_path / "ray" / listed).read_bytes().splitlines()) == sorted(
        (tmp_path / "local" / listed).read_bytes().splitlines())

    # Rerun: nothing to do (no Ray needed), the same output, the annotated images left as they were.
    before = (tmp_path / "ray" / "faces.jsonl").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "annotated").rglob("*.jpg")}
    again = _faceflow("analyze", *inputs, "-o", str(tmp_path / "ray"), "--engine", "ray", "--address", cluster,
                      "--batch-size", "4", *common)
    assert "0 analysed now" in again.stderr and (tmp_path / "ray" / "faces.jsonl").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # An input that changed (another photo under the same name) is analysed again, with its batch only.
    shutil.copy(images[1], changing)
    os.utime(changing, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = _faceflow("analyze", *inputs, "-o", str(tmp_path / "ray"), "--engine", "ray", "--address", cluster,
                      "--batch-size", "4", *common)
    last_batch = (len(got) - 1) % 4 + 1  # changing.jpg is the last input: its batch is the last one
    assert f"{last_batch} analysed now" in third.stderr, third.stderr
    redone = next(r for r in _records(tmp_path / "ray" / "faces.jsonl") if r["path"] == str(changing))
    same_as = next(r for r in expected if r["path"] == str(images[1]))
    assert _close(redone["faces"], same_as["faces"])
    redrawn = _annotated(tmp_path / "ray")  # the redone batch drew the new photo under the old name
    local = _annotated(tmp_path / "local")
    name_changing = next(n for n in redrawn if n.endswith("changing.jpg"))
    name_second = next(n for n in local if n.endswith("/" + images[1].name))
    assert np.abs(redrawn[name_changing].astype(np.int16) - local[name_second]).mean() < 0.5
    _check_exactly_once(tmp_path / "ray", [r["path"] for r in expected])  # type: ignore[misc]


def test_address_of_no_cluster_is_a_config_error_in_bounded_time(tmp_path: Path) -> None:
    """``--address`` where nothing listens: exit 2 naming the address within seconds (Ray itself
    retries for about 14 minutes)."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'faceflow[ray]')")
    address = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    done = _faceflow("analyze", str(_lfw_images(1)[0]), "-o", str(tmp_path / "out"), "--engine", "ray",
                     "--address", address, "--stages", "detect", timeout=120)
    assert time.monotonic() - started < 60
    assert done.returncode == 2, done.stderr
    assert f"cannot reach the Ray cluster at {address}" in done.stderr, done.stderr


def test_annotated_images_never_replace_a_users_file_and_list_only_what_was_written(cluster: str,
                                                                                     tmp_path: Path) -> None:
    """As in process: a file at an annotated image's name that no earlier run wrote is the user's,
    left alone and reported; the list of written images names no failed input (a later run would
    delete a user's file put at such a name)."""
    photos = tmp_path / "in"
    photos.mkdir()
    for p in _lfw_images(3):
        shutil.copy(p, photos / p.name)
    (photos / "broken.jpg").write_bytes(b"not a photo")
    own = tmp_path / "out" / "annotated" / _lfw_images(1)[0].name
    own.parent.mkdir(parents=True)
    own.write_bytes(b"the user's own file")
    args = ["analyze", str(photos), "-o", str(tmp_path / "out"), "--engine", "ray", "--address", cluster,
            "--stages", "detect", "--batch-size", "2"]
    done = _faceflow(*args)
    assert done.returncode == 1, done.stderr
    assert own.read_bytes() == b"the user's own file"
    assert "exists and no earlier faceflow run wrote it" in done.stderr, done.stderr
    listed = (tmp_path / "out" / "annotated" / ".faceflow-annotated").read_bytes().splitlines()
    assert sorted(listed) == sorted(os.fsencode(p.name) for p in _lfw_images(3)[1:])
    assert all((tmp_path / "out" / "annotated" / os.fsdecode(n)).is_file() for n in listed)


# -- 2. killed worker, killed driver: at most the batches in flight are lost, all images once --------


def _start(args: list[str], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "faceflow.cli", *args], env=_env(**env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_shards(out: Path, n: int, proc: subprocess.Popen[str], timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while len(list((out / "shards").glob("images-*.parquet"))) < n:
        if proc.poll() is not None:
            pytest.fail(f"the job ended before {n} batches were written: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"no {n} batches after {timeout} s")
        time.sleep(0.05)


def test_killed_worker_loses_only_its_batches(ray_cluster: tuple[str, str], tmp_path: Path) -> None:
    import psutil

    address, temp = ray_cluster
    images = [str(p) for p in _lfw_images(KILL_IMAGES)]
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join(images) + "\n")
    out = tmp_path / "out"
    args = ["analyze", str(listed), "-o", str(out), "--engine", "ray", "--address", address, "--batch-size", "2",
            "--no-annotate"]
    proc = _start(args)
    _wait_for_shards(out, 1, proc)
    raylets = [p for p in psutil.process_iter(["cmdline"])
               if any(temp in part for part in (p.info["cmdline"] or [])) and "raylet" in " ".join(p.info["cmdline"])]
    actors = [c for r in raylets for c in r.children(recursive=True) if "AnalyzeBatch" in " ".join(c.cmdline())]
    assert actors, "no analysing actor found in the cluster's processes"
    actors[0].kill()
    killed_at = len(list((out / "shards").glob("images-*.parquet")))
    proc.communicate(timeout=JOB_TIMEOUT)
    assert killed_at < KILL_IMAGES // 2, "the job was over before the worker was killed"
    assert not (out / "annotated").exists()  # --no-annotate
    if proc.returncode not in (0, 1):  # Ray gave up on the batch: the rerun finishes it
        rerun = _faceflow(*args)
        assert rerun.returncode == 0, rerun.stderr
    _check_exactly_once(out, images)


def test_killed_driver_loses_only_its_batches(cluster: str, tmp_path: Path) -> None:
    images = [str(p) for p in _lfw_images(KILL_IMAGES)]
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join(images) + "\n")
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="ffdrv-", dir="/tmp")
    args = ["analyze", str(listed), "-o", str(out), "--engine", "ray", "--batch-size", "2", "--no-annotate"]
    # No --address: the driver starts (and here takes down with it) its own local runtime.
    proc = _start([*args, "--workers", "2"], RAY_TMPDIR=ray_tmp)
    try:
        _wait_for_shards(out, 2, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        _kill_tree(ray_tmp)  # what the dead driver's runtime left behind
        shutil.rmtree(ray_tmp, ignore_errors=True)
    kept = len(list((out / "shards").glob("images-*.parquet")))
    assert 2 <= kept < KILL_IMAGES // 2 and not (out / "faces.jsonl").exists()
    rerun = _faceflow(*args, "--address", cluster)
    assert rerun.returncode == 0, rerun.stderr
    done_before = int(rerun.stderr.split(" done before")[0].rsplit(", ", 1)[1])
    assert done_before >= 2 * 2  # the committed batches were kept, not redone
    _check_exactly_once(out, images)


# -- 3. enrolment through Ray into PostgreSQL + pgvector: batches in transactions, never twice -------


def test_enrol_on_ray_into_postgres_is_idempotent(cluster: str, pg_url: str, tmp_path: Path) -> None:
    from faceflow.gallery import open_gallery_store

    people = [d for d in sorted(LFW.iterdir()) if len(list(d.glob("*.jpg"))) >= 2][:4]
    photos = [str(p) for d in people for p in sorted(d.glob("*.jpg"))[:3]]
    enrol = ["enroll", "g", "-", *photos, "--batch", "4", "--largest"]
    first = _faceflow(*enrol, "--store", pg_url, "--engine", "ray", "--address", cluster)
    assert first.returncode == 0, first.stderr
    assert f"enrolled {len(photos)} of {len(photos)} photos" in first.stderr
    again = _faceflow(*enrol, "--store", pg_url, "--engine", "ray", "--address", cluster)
    assert again.returncode == 0, again.stderr
    assert f"({len(photos)} already there)" in again.stderr, again.stderr
    local = _faceflow(*enrol, "--store", f"sqlite:///{tmp_path}/g.db")
    assert local.returncode == 0, local.stderr
    with open_gallery_store(pg_url) as pg, open_gallery_store(f"sqlite:///{tmp_path}/g.db") as lite:
        on_ray = {f.source: f for f in pg.faces("g", embeddings=True)}
        in_process = {f.source: f for f in lite.faces("g", embeddings=True)}
        assert pg.gallery("g").faces == len(photos) and pg.check() == []
    assert on_ray.keys() == in_process.keys() == set(photos)
    for source, face in on_ray.items():
        other = in_process[source]
        assert face.subject == other.subject == Path(source).parent.name
        assert face.source_sha256 == other.source_sha256
        assert np.allclose(face.embedding, other.embedding, atol=1e-4)  # type: ignore[arg-type]


def test_enrol_on_ray_reports_failed_photos_with_newlines_and_tabs_as_in_process(cluster: str,
                                                                                  tmp_path: Path) -> None:
    """A failed photo's name may hold any character but ``/``: the Ray engine names each failure once,
    as the in-process engine does, however its name is made."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("bro\nken.jpg", "tab\tbed.jpg", "line\u2028sep.jpg"):
        (photos / name).write_bytes(b"not a photo")
    shutil.copy(_lfw_images(1)[0], photos / "ok.jpg")

    def failures(store: str, *engine: str) -> str:
        done = _faceflow("enroll", "g", "-", str(photos), "--store", f"sqlite:///{tmp_path}/{store}.db", *engine)
        assert done.returncode == 1, done.stderr
        assert "enrolled 1 of 4 photos" in done.stderr, done.stderr
        return done.stderr[done.stderr.index("failed:"):done.stderr.index("enrolled ")]

    in_process = failures("local")
    assert in_process.count("failed:") == 3
    assert failures("ray", "--engine", "ray", "--address", cluster) == in_process


# -- 4. clustering by components of the threshold graph ---------------------------------------------


def test_cluster_large_equals_average_linkage_with_cannot_link() -> None:
    from faceflow.distributed.clustering import canonical, cluster_large
    from faceflow.gallery.cluster import average_linkage, cannot_link_violations

    rng = np.random.default_rng(7)
    centres = rng.normal(size=(150, 32))
    x = np.repeat(centres, 6, axis=0) + 0.45 * rng.normal(size=(900, 32))
    groups = [i // 4 for i in range(900)]  # photos of four faces: cannot-link inside each
    for threshold in (0.25, 0.45, 0.7):
        expected = canonical(average_linkage(x, groups, threshold))
        got = cluster_large(x, groups, threshold, k=8)  # a small k: the widening search must find the rest
        assert np.array_equal(got, expected), threshold
        assert cannot_link_violations(got.tolist(), groups) == 0
    assert 100 < int(expected.max()) + 1 < 900  # neither everything merged nor nothing


@pytest.mark.slow
def test_cluster_large_equals_in_process_clustering_on_lfw() -> None:
    """The held-out half of LFW (3,889 images, sface at its threshold): the same partition."""
    from faceflow.distributed.clustering import canonical, cluster_large
    from faceflow.eval.clustering import lfw_tuning_half
    from faceflow.eval.identification import lfw_identities
    from faceflow.eval.tasks import lfw_gallery_embedder
    from faceflow.gallery.cluster import average_linkage, cluster_threshold

    paths = [p for name, imgs in lfw_identities(LFW).items() if not lfw_tuning_half(name) for p in imgs]
    embed = lfw_gallery_embedder("sface")
    found = [(p, e) for p in paths if (e := embed(p)) is not None]
    x = np.stack([e for _, e in found])
    groups = [str(p) for p, _ in found]
    expected = canonical(average_linkage(x, groups, cluster_threshold("sface")))
    assert np.array_equal(cluster_large(x, groups, cluster_threshold("sface")), expected)


def test_gallery_cluster_on_ray_equals_in_process(cluster: str, pg_url: str, tmp_path: Path) -> None:
    """``faceflow gallery cluster --engine ray``: neighbour pages and components as Ray tasks, each
    with its own connection to PostgreSQL; the in-process partition."""
    from tests.test_distributed_clustering import enrol_lfw, in_process, read_report

    enrol_lfw(pg_url, 150)
    ids, expected = in_process(pg_url)
    done = _faceflow("gallery", "cluster", "lfw", "--store", pg_url, "--engine", "ray", "--address", cluster,
                     "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    got_ids, labels, _ = read_report(tmp_path / "out")
    assert np.array_equal(got_ids, ids) and np.array_equal(labels, expected)
    assert int(expected.max()) + 1 < ids.size  # some faces clustered together
