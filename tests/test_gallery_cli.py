"""The gallery commands end to end on real photos (face_recognition's samples) with the real models:
galleries with their default (fused) model, clustering with its default (SFace)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faceflow.gallery_cli import standalone


@pytest.fixture(scope="module")
def knn(dataset) -> Path:  # type: ignore[no-untyped-def]
    """Photos of five people in train/<person>/ and five test photos."""
    from faceflow.errors import ModelUnavailable
    from faceflow.gallery.service import make_analyzer

    try:
        make_analyzer().analyze_array(__import__("numpy").zeros((64, 64, 3), "uint8"))
    except ModelUnavailable as exc:
        pytest.skip(f"models unavailable: {exc}")
    return dataset("samples", "face_recognition", "examples", "knn_examples")


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FACEFLOW_GALLERY", str(tmp_path / "galleries.db"))
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> str:
        result = runner.invoke(standalone, [str(a) for a in args])
        assert result.exit_code == code, result.output
        return result.stdout

    return invoke


def test_enroll_identify_export_import_delete(run, knn: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run("enroll", "people", "-", knn / "train")
    broken = knn.parents[2] / "broken"
    run("enroll", "people", "nobody", broken / "zero_faces.png", code=1)  # skipped, reported: exit 1
    (g,) = [json.loads(line) for line in run("gallery", "list", "--json").splitlines()]
    assert (g["name"], g["subjects"], g["faces"]) == ("people", 5, 9) and g["model"].startswith("fused@")
    run("identify", "people", knn / "test", "--out", tmp_path / "ids.jsonl")
    rows = {Path(r["path"]).name: r for r in map(json.loads, (tmp_path / "ids.jsonl").read_text().splitlines())}
    assert [f["subject"] for f in rows["obama1.jpg"]["faces"]] == ["obama"]
    assert rows["alex_lacamoire1.jpg"]["faces"][0]["known"] is True
    assert {"obama", "biden"} <= {f["subject"] for f in rows["obama_and_biden.jpg"]["faces"]}
    assert all(r["error"] is None for r in rows.values())
    run("gallery", "export", "people", tmp_path / "export")
    run("gallery", "import", tmp_path / "export", "--name", "copy")
    names = [json.loads(line)["name"] for line in run("gallery", "list", "--json").splitlines()]
    assert names == ["copy", "people"]
    run("gallery", "reembed", "copy", "--model", "dlib")  # a new model is a re-embedding job
    (copy,) = [g for g in map(json.loads, run("gallery", "list", "--json").splitlines()) if g["name"] == "copy"]
    assert copy["model"].startswith("dlib@") and copy["faces"] == 9
    again = run("identify", "copy", knn / "test" / "obama1.jpg")
    assert json.loads(again)["faces"][0]["subject"] == "obama"
    run("gallery", "delete", "people", "--yes")
    run("identify", "people", knn / "test", code=2)  # no such gallery any more: a usage error


def test_cluster_is_incremental_and_respects_photos(run, knn: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "clusters"
    run("cluster", knn / "train", "--out", out)
    first = json.loads((out / "clusters.json").read_text())
    run("cluster", knn / "train", knn / "test", "--out", out)
    second = json.loads((out / "clusters.json").read_text())
    assert second["faces"] > first["faces"]
    by_id = {c["id"]: {f["key"] for f in c["faces"]} for c in second["clusters"]}
    for c in first["clusters"]:  # earlier clusters keep their id and members
        assert {f["key"] for f in c["faces"]} <= by_id[c["id"]]
    for c in second["clusters"]:
        photos = [f["photo"] for f in c["faces"]]
        assert len(photos) == len(set(photos)), "two faces of one photo in one cluster"
    obama = next(c for c in second["clusters"] if any("obama1" in f["photo"] for f in c["faces"]))
    assert any("obama_and_biden" in f["photo"] for f in obama["faces"])
    assert (out / "index.html").exists() and all((out / "clusters" / f"{c['id']}.html").exists()
                                                 for c in second["clusters"])


def test_cluster_refuses_an_output_folder_of_another_model(run, knn: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "clusters"
    run("cluster", knn / "test" / "obama1.jpg", "--out", out)
    result = CliRunner().invoke(standalone, ["cluster", str(knn / "test" / "obama1.jpg"), "--out", str(out),
                                             "--model", "dlib"])
    assert result.exit_code == 2, result.output  # a clear usage error, not a traceback
    message = " ".join(result.output.split())  # the console wraps long lines
    assert "was clustered with sface@" in message and "use another --out" in message


def test_eval_clustering_rejects_an_unknown_people_choice(tmp_path: Path) -> None:
    """A usage error (exit 2) before any model is loaded: the three choices are named."""
    result = CliRunner().invoke(standalone, ["eval", "clustering", "--root", str(tmp_path), "--people", "most"])
    assert result.exit_code == 2
    assert "--people must be one of held-out, tuning, all, not 'most'" in result.stderr
