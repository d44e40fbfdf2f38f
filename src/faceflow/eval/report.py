"""Printing, JSON and Markdown reports of evaluation results, with one plot per protocol.

``results`` everywhere maps a label (a model or setting) to what a runner or ``evaluate_*`` returned;
each result names its ``protocol`` (``lfw``, ``wider``, ``300w``, ``utkface``). Rates stay fractions
in JSON and become percentages in printed and Markdown tables.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from faceflow.extras import require

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Results = Mapping[str, Mapping[str, Any]]

TITLES = {
    "lfw": "LFW View 2, 10-fold",
    "wider": "WIDER FACE val (AP)",
    "300w": "300-W, 68 points",
    "utkface": "UTKFace age and gender",
}
_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "lfw": [
        ("accuracy_mean", "Accuracy", "pct"), ("accuracy_std", "± std", "pct"),
        ("tar_at_far_1e-3", "TAR@FAR=1e-3", "pct"), ("roc_auc", "AUC", "f4"), ("eer", "EER", "pct"),
        ("detection_failures", "No face", "int"), ("images_per_second", "img/s", "f1"),
    ],
    "wider": [
        ("easy", "Easy", "f4"), ("medium", "Medium", "f4"), ("hard", "Hard", "f4"),
        ("median_ms", "Median ms", "f1"), ("images", "Images", "int"),
    ],
    "300w": [
        ("nme_mean", "NME mean", "pct"), ("nme_median", "NME median", "pct"),
        ("failure_rate", "Failures @0.1", "pct"), ("auc_0.1", "AUC@0.1", "f4"), ("missed", "Missed", "int"),
        ("median_ms", "Median ms", "f1"),
    ],
    "utkface": [
        ("age_mae", "Age MAE", "f2"), ("cs5", "CS(5)", "pct"), ("gender_accuracy", "Gender", "pct"),
        ("n", "n", "int"), ("no_face", "No face", "int"), ("skipped", "Skipped", "int"),
        ("median_ms", "Median ms", "f1"),
    ],
}
_FORMATS: dict[str, Callable[[Any], str]] = {
    "pct": lambda v: f"{100 * v:.2f} %",
    "f4": lambda v: f"{v:.4f}",
    "f2": lambda v: f"{v:.2f}",
    "f1": lambda v: f"{v:.1f}",
    "int": lambda v: f"{int(v):,}",
}


def _by_protocol(results: Results) -> dict[str, dict[str, Mapping[str, Any]]]:
    grouped: dict[str, dict[str, Mapping[str, Any]]] = {}
    for label, result in results.items():
        grouped.setdefault(str(result.get("protocol", "other")), {})[label] = result
    return grouped


def table_rows(protocol: str, results: Results) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows (one per label) of a protocol's table; ``-`` for absent figures."""
    columns = _COLUMNS.get(protocol) or [
        (k, k, "f4") for k in dict.fromkeys(k for r in results.values() for k, v in r.items()
                                            if isinstance(v, int | float) and not isinstance(v, bool))
    ]
    rows = [
        [label] + ["-" if r.get(key) is None else _FORMATS[fmt](r[key]) for key, _, fmt in columns]
        for label, r in results.items()
    ]
    return ["", *(header for _, header, _ in columns)], rows


def print_tables(results: Results, console: Console | None = None) -> None:
    """One Rich table per protocol, rows = labels."""
    console = console or Console()
    for protocol, group in _by_protocol(results).items():
        headers, rows = table_rows(protocol, group)
        table = Table(title=TITLES.get(protocol, protocol))
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def to_jsonable(value: Any, curves: bool = False) -> Any:
    """Plain JSON data: numpy values converted, ``curves`` entries dropped unless asked for."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, curves) for k, v in value.items() if curves or k != "curves"}
    if isinstance(value, list | tuple | np.ndarray):
        return [to_jsonable(v, curves) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(results: Results, path: Path | str, curves: bool = False) -> Path:
    """Write ``results`` as indented JSON (curves only when asked)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(results, curves), indent=2, allow_nan=False) + "\n")
    return path


def _plot_lfw(ax: Axes, label: str, r: Mapping[str, Any]) -> None:
    c = r["curves"]
    ax.plot(c["fpr"], c["tpr"], label=f"{label} (AUC {r['roc_auc']:.4f})")
    ax.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.01), xlabel="False accept rate",
           ylabel="True accept rate", title="LFW ROC")


def _plot_300w(ax: Axes, label: str, r: Mapping[str, Any]) -> None:
    c = r["curves"]
    t = float(c["threshold"])
    grid = np.linspace(0, t, 201)
    ced = np.searchsorted(np.sort(c["nme"]), grid, side="right") / c["images"]
    ax.plot(100 * grid, ced, label=f"{label} (AUC {r[f'auc_{t:g}']:.4f})")
    ax.set(xlim=(0, 100 * t), ylim=(0, 1), xlabel="NME (% of outer-eye-corner distance)",
           ylabel="Fraction of images", title="300-W CED")


def _plot_utkface(ax: Axes, label: str, r: Mapping[str, Any]) -> None:
    err = np.asarray(r["curves"]["age_error"])
    ax.hist(np.clip(err, -40, 40), bins=list(range(-41, 42, 2)), histtype="step", label=label)
    ax.set(xlabel="Predicted - true age (years, clipped to ±40)", ylabel="Images", title="UTKFace age error")


def new_figure(what: str, **kwargs: Any) -> Figure:
    """A Matplotlib figure for an evaluation plot (``what`` names it in the error when Matplotlib is
    missing). A plain :class:`~matplotlib.figure.Figure`, not pyplot's: no global state, no backend to
    choose, nothing to close, safe from threads."""
    figure: type[Figure] = require("matplotlib.figure", what).Figure
    return figure(**kwargs)


def save_figure(fig: Figure, path: Path | str, *, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (its folder made first); the path written."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def plot_protocol(protocol: str, results: Results, path: Path | str) -> Path | None:
    """Save the protocol's plot (ROC, PR curves, CED or age-error histogram) with one line per label."""
    results = {k: r for k, r in results.items() if "curves" in r}
    if protocol not in TITLES or not results:
        return None
    fig = new_figure("evaluation plots", figsize=(15, 4.5) if protocol == "wider" else (6.5, 4.5),
                     layout="constrained")
    if protocol == "wider":
        axes = fig.subplots(1, 3)
        for ax, setting in zip(axes, ("easy", "medium", "hard"), strict=True):
            for label, r in results.items():
                c = r["curves"][setting]
                ax.plot(c["recall"], c["precision"], label=f"{label} ({r[setting]:.4f})")
            ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall", ylabel="Precision", title=f"WIDER {setting}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    else:
        ax = fig.subplots()
        draw = {"lfw": _plot_lfw, "300w": _plot_300w, "utkface": _plot_utkface}[protocol]
        for label, r in results.items():
            draw(ax, label, r)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(results: Results, out_dir: Path | str, title: str = "faceflow evaluation",
                 notes: str | None = None) -> Path:
    """Write ``report.md``, ``results.json`` and one ``<protocol>.png`` per protocol into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / "results.json")
    parts = [f"# {title}", ""] + ([notes, ""] if notes else [])
    for protocol, group in _by_protocol(results).items():
        parts += [f"## {TITLES.get(protocol, protocol)}", "", _markdown_table(*table_rows(protocol, group)), ""]
        png = plot_protocol(protocol, group, out / f"{protocol}.png")
        if png is not None:
            parts += [f"![{TITLES[protocol]}]({png.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
