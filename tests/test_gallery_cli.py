"""The gallery commands end to end on real photos (face_recognition's samples) with the real models:
galleries with their default (fused) model, clustering with its default (SFace)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from faceflow.gallery_cli import standalone
from tests.conftest import postgres_url_as


@pytest.fixture(scope="module")
def knn(dataset) -> Path:  # type: ignore[no-untyped-def]
    """Photos of five people in train/<person>/ and five test photos."""
    from faceflow.errors import ModelUnavailable
    from faceflow.gallery.workflows import make_analyzer

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


@pytest.mark.parametrize("option", [("--threshold", "nan"), ("--threshold", "-2"), ("--min-size", "0"),
                                    ("--min-score", "nan")])
def test_cluster_refuses_odd_options_before_any_work(knn: Path, tmp_path: Path, option: tuple[str, str]) -> None:
    """A usage error (exit 2) naming the option, and no output written; before, --threshold nan clustered
    two people together and wrote a clusters.json with ``NaN`` in it (exit 0)."""
    out = tmp_path / "clusters"
    result = CliRunner().invoke(standalone, ["cluster", str(knn / "test" / "obama1.jpg"), "--out", str(out), *option])
    assert result.exit_code == 2, result.output
    assert option[0] in " ".join(result.output.split())
    assert not out.exists()


def _invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(standalone, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())  # the console wraps long lines


def test_group_photo_is_refused_unless_the_largest_face_is_asked_for(run, knn: Path) -> None:  # type: ignore[no-untyped-def]
    run("gallery", "create", "g", "--model", "sface")
    group = knn / "test" / "obama_and_biden.jpg"
    code, out = _invoke("enroll", "g", "obama", group, knn / "test" / "obama1.jpg")
    assert code == 1, out  # the group photo failed on its own, naming how many faces it has
    found = re.search(r"obama_and_biden\.jpg: (\d+) faces found, expected one", out)
    assert found and int(found[1]) >= 2 and "--largest" in out, out
    (g,) = [json.loads(line) for line in run("gallery", "list", "--json").splitlines()]
    assert g["faces"] == 1  # the single-face photo was enrolled all the same
    code, out = _invoke("enroll", "g", "obama", group, "--largest")
    assert code == 0 and f"obama_and_biden.jpg: {found[1]} faces; the largest enrolled" in out, out
    (g,) = [json.loads(line) for line in run("gallery", "list", "--json").splitlines()]
    assert g["faces"] == 2


def test_bad_subject_names_are_usage_errors(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    photo = tmp_path / "p.png"
    PILImage.new("RGB", (32, 32)).save(photo)
    for name, why in [("", "cannot be empty"), ("  ", "cannot be empty"), ("a\nb", "U+000A"),
                      ("x" * 10_000, "10,000 characters")]:
        code, out = _invoke("enroll", "g", name, photo)
        assert code == 2 and why in out, out
    assert run("gallery", "list", "--json") == ""  # refused before anything was created or analysed


def test_store_down_or_damaged_exits_4_and_model_mismatch_5(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not a SQLite file " * 200)
    code, out = _invoke("gallery", "list", "--store", damaged)
    assert code == 4 and "not a database" in out, out
    code, out = _invoke("gallery", "list", "--store", "postgresql://faceflow@127.0.0.1:9/none")
    assert code == 4 and "cannot connect" in out, out
    from faceflow.gallery import open_gallery_store

    with open_gallery_store(tmp_path / "galleries.db") as s:  # a gallery of weights this faceflow lacks
        s.create_gallery("old", "sface@000000000000", 128, metadata={"embedder": "sface", "flip": False})
    photo = tmp_path / "p.png"
    PILImage.new("RGB", (32, 32)).save(photo)
    code, out = _invoke("identify", "old", photo)
    assert code == 5 and "holds sface@000000000000 embeddings" in out and "re-embed" in out, out
    code, out = _invoke("identify", "nothere", photo)
    assert code == 2 and "no gallery named 'nothere'" in out, out


def test_a_store_whose_folder_cannot_be_made_exits_4(tmp_path: Path) -> None:
    """A SQLite store under a regular file (its folder cannot be created) is 'store unavailable',
    exit 4, naming the path; it was a traceback and exit 1."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out = _invoke("gallery", "list", "--store", blocker / "sub" / "g.db")
    assert code == 4 and "cannot create the folder" in out and str(blocker) in out and "Traceback" not in out, out
    assert blocker.read_text() == "not a folder"


def test_a_postgres_password_is_never_printed(pg_url: str) -> None:
    """Messages and reports name a PostgreSQL store without its password (as ``user:password@`` or
    ``?password=``); they printed the URL as given, password and all."""
    import psycopg

    secret = "s3cret-pw"
    for url in (f"postgresql://faceflow:{secret}@127.0.0.1:9/none",
                f"postgresql://faceflow@127.0.0.1:9/none?password={secret}&connect_timeout=5"):
        code, out = _invoke("gallery", "list", "--store", url)
        assert code == 4 and "cannot connect" in out and secret not in out and "***" in out, out
    as_admin = postgres_url_as(pg_url, "postgres", secret)
    code, out = _invoke("gallery", "create", "g", "--model", "sface", "--store", as_admin)
    assert code == 0 and "created gallery 'g'" in out and secret not in out, out  # the test server trusts any
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    try:  # a role with no rights on the database: the schema cannot be set up
        code, out = _invoke("gallery", "list", "--store", postgres_url_as(pg_url, role, secret))
        assert code == 4 and "cannot set up" in out and secret not in out, out
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


def test_eval_clustering_rejects_an_unknown_people_choice(tmp_path: Path) -> None:
    """A usage error (exit 2) before any model is loaded: the three choices are named."""
    result = CliRunner().invoke(standalone, ["eval", "clustering", "--root", str(tmp_path), "--people", "most"])
    assert result.exit_code == 2
    assert "--people must be one of held-out, tuning, all, not 'most'" in result.stderr


def test_identify_out_naming_an_input_is_refused_before_it_is_truncated(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--out was opened for writing before the photos were read: the photo became an empty file."""
    photo = tmp_path / "p.png"
    PILImage.new("RGB", (32, 32)).save(photo)
    before = photo.read_bytes()
    run("gallery", "create", "g", "--model", "sface")
    code, out = _invoke("identify", "g", photo, "--out", photo)
    assert code == 2 and "is one of the photos" in out, out
    code, out = _invoke("identify", "g", photo, "--out", tmp_path / "missing" / "ids.jsonl")
    assert code == 2 and "cannot write" in out, out
    assert photo.read_bytes() == before
