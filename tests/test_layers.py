"""Module structure: faceflow's imports form no cycle, and the light entry points stay light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "faceflow"
HEAVY = ("psycopg", "usearch", "matplotlib", "ray", "pyarrow")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> set[str]:
    """faceflow modules imported anywhere in ``tree`` (inside functions too; not under TYPE_CHECKING)."""
    found: set[str] = set()
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != module}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {m: _imports(ast.parse(p.read_text()), m, p.name == "__init__.py", known) for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that starts and ends at the same module, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return [*path[path.index(n):], n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_faceflow_imports_have_no_cycle() -> None:
    """Top-level and late (in-function) imports alike: a late import only hides a cycle, it does not
    remove the two modules' dependence on each other."""
    graph = import_graph()
    assert "faceflow.gallery.store" in graph and graph["faceflow.cli"]  # the walk did find the modules
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def _loaded_after(code: str) -> list[str]:
    heavy = f"sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})"
    probe = f"import sys, json\n{code}\nprint(json.dumps({heavy}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_entry_points_do_not_import_optional_extras() -> None:
    assert _loaded_after("import faceflow, faceflow.pipeline, faceflow.cli, faceflow.gallery, faceflow.eval") == []
    help_run = "from faceflow.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass"
    assert _loaded_after(help_run) == []
    assert _loaded_after("import faceflow.gallery.search, faceflow.gallery.backends, faceflow.gallery.folders") == []


INTERFACES = ("faceflow.cli", "faceflow.cli_base", "faceflow.serve_cli", "faceflow.gallery_cli",
              "faceflow.liveness_cli", "faceflow.distributed_cli", "faceflow.service")
"""The thin interfaces (DESIGN.md's top layer): exit codes and HTTP statuses are decided only here."""
APPLICATIONS = ("faceflow.pipeline", "faceflow.video", "faceflow.track", "faceflow.gallery", "faceflow.anonymize",
                "faceflow.eval", "faceflow.engine", "faceflow.liveness.video", "faceflow.bench", "faceflow.outputs",
                "faceflow.draw", "faceflow.distributed")
"""The pipeline and what runs it (video, galleries, evaluation, ...). ``liveness.video`` lives beside its
stage but runs detection and tracking over frames, so it sits here: no stage may import it."""


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _upward(graph: dict[str, set[str]], lower: Callable[[str], bool], upper: tuple[str, ...]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() if lower(m) for d in deps if _under(d, upper))


def test_core_modules_import_no_interface() -> None:
    """No library module imports the CLI or the service (``*_cli`` modules included): they sit on top."""
    graph = import_graph()
    assert "faceflow.service.app" in graph and "faceflow.liveness_cli" in graph  # the new packages are walked
    assert _upward(graph, lambda m: not _under(m, INTERFACES), INTERFACES) == []
    assert _upward(graph, lambda m: _under(m, ("faceflow.service",)), ("faceflow.cli", "faceflow.cli_base")) == []


def test_stages_import_no_application() -> None:
    """Stages and what they stand on (models, detectors, io, types) never import the pipeline, video, galleries,
    evaluation or the interfaces: a stage does not know which mode or application runs it."""
    graph = import_graph()
    above = APPLICATIONS + INTERFACES
    # ``faceflow`` itself is the public facade (it re-exports the Analyzer), not a layer.
    assert _upward(graph, lambda m: m != "faceflow" and not _under(m, above), above) == []
