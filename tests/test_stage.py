"""The stage registry: declarations, ordering, options reachable by keyword and CLI, plug-ins, runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faceflow.detect import DetectorOptions
from faceflow.errors import ConfigError
from faceflow.landmarks import LandmarksOptions, mesh_to_68
from faceflow.models.registry import get
from faceflow.models.runtime import Runtime, thread_budget
from faceflow.models.store import ModelStore
from faceflow.pipeline import Analyzer, AnalyzerOptions
from faceflow.stage import Stage, StageRegistry, StageSpec, option, registry
from faceflow.types import Face, Image

REPO = Path(__file__).resolve().parents[1]
FACEFLOW = [str(Path(sys.executable).parent / "faceflow")]


# -- toy stages for the ordering rules (no models) ------------------------------------------------------
@dataclass(frozen=True)
class NoOptions:
    """Options of the toy stages."""


@dataclass(frozen=True)
class StepOptions:
    step: int = option(1, "How much to add.", flag="step")


class Toy(Stage):
    name = "toy"

    def __init__(self, options: Any, runtime: Any) -> None:
        self.options = options

    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        return faces


def _spec(name: str, needs: tuple[str, ...] = (), provides: tuple[str, ...] = (), **kw: Any) -> StageSpec:
    return StageSpec(name=name, help=name, options=kw.pop("options", NoOptions), factory=Toy, needs=needs,
                     provides=provides, **kw)


FINDER = _spec("finder", provides=("box",))
A_NEEDS_B = _spec("a", needs=("y",), provides=("x",))
B_NEEDS_A = _spec("b", needs=("x",), provides=("y",))
ORPHAN = _spec("orphan", needs=("nothing_provides_this",))
COUNTER = _spec("counter", needs=("box",), provides=("count",), options=StepOptions)
CLASHING = _spec("clash", options=StepOptions)  # claims --step too


def toy_registry(*names: str) -> StageRegistry:
    return StageRegistry([f"tests.test_stage:{n}" for n in names], entry_points=False)


def test_plan_pulls_in_providers_and_orders_by_declarations() -> None:
    reg = registry()
    haar = {"detect": DetectorOptions(detector="haar")}
    assert reg.plan(["pose"], haar) == ("detect", "landmarks", "pose")  # haar gives no five points
    assert reg.plan(["pose"], {}) == ("detect", "pose")  # YuNet's five points are enough
    # The landmark stage reuses a mesh: when both are asked for, the mesh runs first.
    assert reg.plan(["landmarks", "mesh"], {}) == ("detect", "mesh", "landmarks")
    assert reg.plan(["attributes", "pose", "landmarks"], {}) == ("detect", "landmarks", "pose", "attributes")


def test_plan_refuses_cycles_missing_providers_and_unknown_names() -> None:
    with pytest.raises(ConfigError, match="cycle"):
        toy_registry("A_NEEDS_B", "B_NEEDS_A").plan(["a"], {})
    with pytest.raises(ConfigError, match="needs 'nothing_provides_this'"):
        toy_registry("FINDER", "ORPHAN").plan(["orphan"], {})
    with pytest.raises(ConfigError, match="unknown stage 'posee'"):
        registry().plan(["posee"], {})
    with pytest.raises(ConfigError, match="no stage requested"):
        registry().plan([" ", ""], {})


def test_two_stages_may_not_claim_one_name_or_one_cli_flag() -> None:
    with pytest.raises(ConfigError, match="two stages are named 'finder'"):
        _ = toy_registry("FINDER", "FINDER").specs
    with pytest.raises(ConfigError, match="--step"):
        toy_registry("COUNTER", "CLASHING").fields()


def test_every_stage_option_is_reachable_by_keyword_and_on_the_cli() -> None:
    fields = registry().fields()
    assert {f.stage for f in fields} >= {"detect", "mesh", "landmarks", "embed", "attributes"}
    samples = {bool: None, int: 3, float: 0.25, str: None, tuple: None}
    for f in fields:
        value: Any
        if f.choices:
            value = f.choices[-1] if not isinstance(f.default, tuple) else (f.choices[-1],)
        elif f.default is True or f.default is False:
            value = not f.default
        else:
            value = samples[f.base]
        opts = AnalyzerOptions().with_values({f.keyword: value})
        assert getattr(opts.options_for(f.stage), f.name) == value, f.key
    help_text = subprocess.run([*FACEFLOW, "analyze", "--help"], capture_output=True, text=True,
                               env={**os.environ, "COLUMNS": "250"}, timeout=120).stdout
    for f in fields:
        assert f"--{f.key}" in help_text, f.key


def test_options_objects_keywords_and_clear_errors() -> None:
    a = Analyzer(stages="landmarks", landmarks=LandmarksOptions(source="dlib", mirror=False), threshold=0.7)
    assert a.options.options_for("landmarks") == LandmarksOptions(source="dlib", mirror=False)
    assert a.options.options_for("detect").score_threshold == 0.7
    assert a.stages[1].options.mirror is False  # type: ignore[attr-defined]
    b = Analyzer(stages="detect", landmarks_mirror="no", detector_options=DetectorOptions(max_faces=2))
    assert b.options.options_for("detect").max_faces == 2  # the earlier keyword still works
    with pytest.raises(ConfigError, match="threshold: 'high' is not a valid float"):
        Analyzer(threshold="high")
    with pytest.raises(ConfigError, match="unknown embedders 'arcface'"):
        Analyzer(stages="embed", embedders="sface,arcface")
    with pytest.raises(ConfigError, match="unknown option 'mirror'"):
        Analyzer(mirror=False)


def _count_mesh_runs(analyzer: Analyzer) -> list[int]:
    """Count the mesh network's invocations (the real model runs; the counter only watches)."""
    model = analyzer.runtime.tflite("face_mesh")
    calls = [0]
    run = model.run

    def counted(*arrays: Any) -> Any:
        calls[0] += 1
        return run(*arrays)

    model.run = counted  # type: ignore[method-assign]
    return calls


def test_mesh_is_computed_once_when_mesh_and_68_points_are_asked_for(astronaut: Image) -> None:
    both = Analyzer(stages="landmarks,mesh", landmarks="mesh", landmarks_mirror=False)
    calls = _count_mesh_runs(both)
    (face,) = both.analyze(astronaut)
    assert calls[0] == 2  # one look and one refinement, for the mesh stage only
    np.testing.assert_allclose(face.landmarks68, mesh_to_68(face.mesh, both.runtime), atol=1e-4)
    alone = Analyzer(stages="landmarks", landmarks="mesh", landmarks_mirror=False)
    (only68,) = alone.analyze(astronaut)
    np.testing.assert_allclose(only68.landmarks68, face.landmarks68, atol=1e-3)  # same points either way
    assert only68.mesh is None


# -- runtime -----------------------------------------------------------------------------------------
def test_thread_budget_divides_the_cores_between_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACEFLOW_THREADS", raising=False)
    from faceflow.models.runtime import cpu_count

    cores = cpu_count()
    assert thread_budget(None, 1) == cores
    assert thread_budget(None, cores * 4) == 1
    assert thread_budget(3, 8) == 3
    monkeypatch.setenv("FACEFLOW_THREADS", "2")
    assert thread_budget(None, 4) == 2
    monkeypatch.setenv("FACEFLOW_THREADS", "two")
    with pytest.raises(ConfigError, match="FACEFLOW_THREADS"):
        thread_budget()
    with pytest.raises(ConfigError, match="workers"):
        thread_budget(None, 0)
    monkeypatch.delenv("FACEFLOW_THREADS")
    assert Analyzer(stages="detect", workers=cores * 2).runtime.threads == 1


def test_runtime_builds_each_model_once_across_threads_and_closes(astronaut: Image) -> None:
    rt = Runtime(threads=1)
    sessions: list[Any] = []
    workers = [threading.Thread(target=lambda: sessions.append(rt.onnx("gender"))) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len({id(s) for s in sessions}) == 1
    assert rt.loaded == ["onnx:gender:()"]
    a, b = Analyzer(stages="attributes", runtime=rt), Analyzer(stages="attributes", runtime=rt)
    assert a.runtime is b.runtime
    a.close()  # a runtime passed in belongs to its caller
    assert a.analyze(astronaut)[0].age is not None
    rt.close()
    assert rt.closed and rt.loaded == []
    with pytest.raises(ConfigError, match="closed"):
        b.analyze(astronaut)
    with Analyzer(stages="detect") as own:
        own.analyze(astronaut)
    assert own.runtime.closed


def test_store_fetch_of_one_file_does_not_block_another(tmp_path: Path) -> None:
    """A download in progress (its file's lock held) leaves other files' lookups free."""
    store = ModelStore()
    slow, other = get("age").files[0], get("gender").files[0]
    store.fetch_file(other)
    store._verified.clear()  # force a fresh check of ``other``
    held = threading.Event()
    release = threading.Event()

    def downloading() -> None:
        with store._file_lock(slow):
            held.set()
            release.wait(10)

    t = threading.Thread(target=downloading)
    t.start()
    held.wait(5)
    t0 = time.perf_counter()
    assert store.fetch_file(other).is_file()
    assert time.perf_counter() - t0 < 5
    release.set()
    t.join()


# -- a third-party stage through the entry-point group --------------------------------------------------
@pytest.fixture
def brightness_plugin(tmp_path: Path):  # type: ignore[no-untyped-def]
    """tests/plugins/faceflow_brightness installed into this venv for the test, then removed."""
    src = tmp_path / "faceflow_brightness"
    shutil.copytree(REPO / "tests" / "plugins" / "faceflow_brightness", src)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-build-isolation", "--no-deps", "--no-index", str(src)],
                   check=True, timeout=300, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "faceflow-brightness"], check=True, timeout=120,
                       capture_output=True)


def test_a_plugin_stage_runs_through_the_cli(brightness_plugin: None, tmp_path: Path, astronaut: Image) -> None:
    from PIL import Image as PILImage

    photo = tmp_path / "astronaut.png"
    PILImage.fromarray(astronaut).save(photo)
    listing = subprocess.run([*FACEFLOW, "stages"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "COLUMNS": "250"})
    assert "brightness" in listing.stdout
    out = tmp_path / "out"
    run = subprocess.run([*FACEFLOW, "analyze", str(photo), "--out", str(out), "--stages", "brightness",
                          "--no-brightness-inner", "--no-annotate"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (line,) = [json.loads(x) for x in (out / "faces.jsonl").read_text().splitlines()]
    (face,) = line["faces"]
    x1, y1, x2, y2 = (int(v) for v in face["box"])
    assert face["brightness"] == pytest.approx(astronaut.mean(axis=2)[y1:y2, x1:x2].mean(), abs=0.6)


# -- hostile plug-ins, found through real entry points on sys.path (nothing installed) ------------------
PLUGIN_MODULE = """
from dataclasses import dataclass

from faceflow.stage import Stage, StageSpec, option


@dataclass(frozen=True)
class NoOptions:
    pass


@dataclass(frozen=True)
class OutOptions:
    out: str = option("x", "A flag that faceflow analyze has already.", flag="out")


@dataclass(frozen=True)
class DetectorOptions:
    detector: str = option("x", "A flag of the built-in detect stage.", flag="detector")


class Fine(Stage):
    name = "fine"

    def __init__(self, options, runtime):
        pass

    def run(self, image, faces):
        return faces


def spec(name, options=NoOptions, **kw):
    return StageSpec(name=name, help=name, options=options, factory=Fine, **kw)


FINE = spec("fine", needs=("box",), provides=("fine",))
SHADOW = spec("pose")
NOT_A_SPEC = {"name": "notspec"}
NOT_A_DATACLASS = spec("plain", options=int)
ODD_NAME = spec("my stage,x")
NEEDS_A_STRING = spec("stringy", needs="box")
TAKES_DETECTOR = spec("takes", options=DetectorOptions)
TAKES_OUT = spec("outflag", options=OutOptions)
"""

PLUGINS = {
    "fine": "FINE", "boom": "NO_SUCH_ATTRIBUTE", "pose": "SHADOW", "notspec": "NOT_A_SPEC",
    "plain": "NOT_A_DATACLASS", "odd": "ODD_NAME", "stringy": "NEEDS_A_STRING", "takes": "TAKES_DETECTOR",
    "outflag": "TAKES_OUT",
}


def write_plugins(root: Path, plugins: dict[str, str]) -> Path:
    """A distribution ``hostile-plugins`` in ``root`` (module and dist-info, as pip would leave them) whose
    ``faceflow.stages`` entry points name ``hostile_plugins:ATTR``."""
    (root / "hostile_plugins.py").write_text(PLUGIN_MODULE)
    info = root / "hostile_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile-plugins\nVersion: 0.1\n")
    lines = [f"{name} = hostile_plugins:{attr}" for name, attr in plugins.items()]
    (info / "entry_points.txt").write_text("[faceflow.stages]\n" + "\n".join(lines) + "\n")
    return root


def test_broken_plugins_are_left_out_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.syspath_prepend(str(write_plugins(tmp_path, PLUGINS)))
    reg = StageRegistry()
    assert reg.names()[:8] == registry().names()[:8]
    assert reg["pose"].factory.__module__ == "faceflow.pose"  # type: ignore[union-attr]  # the built-in stays
    assert reg.plan(["fine"], {}) == ("detect", "fine")
    assert next(f for f in reg.fields() if f.key == "detector").stage == "detect"  # the built-in keeps it
    problems = {
        "boom": "NO_SUCH_ATTRIBUTE", "pose": "two stages are named 'pose'", "notspec": "not a faceflow StageSpec",
        "plain": "options must be a dataclass", "odd": "'my stage,x' is not a valid stage name",
        "stringy": "needs must be a tuple", "takes": "--detector is declared by stages 'detect' and 'takes'",
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for name, problem in problems.items():
        assert any(f"plug-in {name!r}" in w and problem in w for w in warnings), (name, warnings)
        if name != "pose":
            assert name not in reg.names()
            with pytest.raises(ConfigError, match=f"plug-in {name!r} .*{problem}"):
                reg.plan([name], {})


def test_broken_plugins_do_not_break_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "250", "PYTHONPATH": os.pathsep.join(
        [str(write_plugins(tmp_path, PLUGINS)), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    for args in (["--help"], ["analyze", "--help"], ["stages"]):
        run = subprocess.run([*FACEFLOW, *args], capture_output=True, text=True, env=env, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "hostile_plugins:ODD_NAME" in run.stderr  # the warning names the plug-in
    analyze_help = subprocess.run([*FACEFLOW, "analyze", "--help"], capture_output=True, text=True, env=env,
                                  timeout=120)
    assert "--outflag" not in analyze_help.stdout and "--out " in analyze_help.stdout
    assert "option --out of stage 'outflag'" in analyze_help.stderr  # the plug-in's flag is refused, named
    listing = subprocess.run([*FACEFLOW, "stages"], capture_output=True, text=True, env=env, timeout=120).stdout
    assert "fine" in listing and "--detector" in listing
    run = subprocess.run([*FACEFLOW, "analyze", str(tmp_path), "--stages", "boom"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 2 and "plug-in 'boom'" in run.stderr
