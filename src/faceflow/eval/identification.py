"""Open-set 1:N identification: metrics (rank-1, FNIR at FPIR, DET) and the LFW protocol runner.

Definitions (as in NIST's FRVT 1:N reports, rank 1):

* a *mated* search (the probe's person is enrolled) is a **miss** at threshold ``t`` unless the top
  candidate is that person and scores at least ``t``; **FNIR(t)** is the fraction of mated searches
  that miss; the **rank-1 identification rate** is the fraction whose top candidate is right, with
  no threshold;
* a *non-mated* search (the person is not enrolled) is a **false positive** at ``t`` when its top
  candidate scores at least ``t``; **FPIR(t)** is their fraction;
* **FNIR at FPIR = x** is FNIR at the lowest threshold whose FPIR does not exceed x.

A probe in which no face is found counts as a miss when mated and as a correct rejection when
non-mated (its score is ``-inf``).

LFW protocol (``faceflow eval identification --root LFW``): the gallery is the first image (by file
name) of every person with two or more images; mated probes are their other images; non-mated probes
are the images of the people with exactly one image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import DatasetError

EmbedFn = Callable[[Path], "npt.NDArray[np.floating[Any]] | None"]
"""``embed_fn(path)`` -> the embedding of the image's (main) face, or ``None`` when none is found."""

FPIR_POINTS = (0.01, 0.001)


def rank1_rate(mated_correct: npt.ArrayLike) -> float:
    """Fraction of mated searches whose top candidate is the right person."""
    c = np.asarray(mated_correct, dtype=bool)
    return float(c.mean()) if c.size else float("nan")


def fpir_at(nonmated_scores: npt.ArrayLike, threshold: float) -> float:
    """Fraction of non-mated searches whose top score is >= ``threshold``."""
    s = np.asarray(nonmated_scores, dtype=np.float64)
    return float(np.mean(s >= threshold)) if s.size else float("nan")


def fnir_at(mated_correct: npt.ArrayLike, mated_scores: npt.ArrayLike, threshold: float) -> float:
    """Fraction of mated searches that miss at ``threshold`` (wrong top candidate, or too low a score)."""
    c = np.asarray(mated_correct, dtype=bool)
    s = np.asarray(mated_scores, dtype=np.float64)
    return float(np.mean(~(c & (s >= threshold)))) if c.size else float("nan")


def threshold_at_fpir(nonmated_scores: npt.ArrayLike, fpir: float) -> float:
    """The lowest threshold whose FPIR is at most ``fpir`` (the one galleries calibrate with)."""
    from faceflow.gallery.search import calibrate_threshold

    return calibrate_threshold(nonmated_scores, fpir)


def fnir_at_fpir(
    mated_correct: npt.ArrayLike, mated_scores: npt.ArrayLike, nonmated_scores: npt.ArrayLike, fpir: float
) -> tuple[float, float]:
    """``(FNIR, threshold)`` at the lowest threshold whose FPIR does not exceed ``fpir``."""
    t = threshold_at_fpir(nonmated_scores, fpir)
    return fnir_at(mated_correct, mated_scores, t), t


def det_curve(
    mated_correct: npt.ArrayLike, mated_scores: npt.ArrayLike, nonmated_scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(fpir, fnir, thresholds)`` at every distinct finite score, thresholds ascending."""
    c = np.asarray(mated_correct, dtype=bool)
    ms = np.asarray(mated_scores, dtype=np.float64)
    ns = np.asarray(nonmated_scores, dtype=np.float64)
    t = np.unique(np.concatenate([ms[np.isfinite(ms)], ns[np.isfinite(ns)]]))
    ns_sorted = np.sort(ns)
    fpir = 1.0 - np.searchsorted(ns_sorted, t, side="left") / max(ns.size, 1)
    hits = np.sort(ms[c])
    fnir = 1.0 - (hits.size - np.searchsorted(hits, t, side="left")) / max(ms.size, 1)
    return fpir, fnir, t


def evaluate_identification(
    mated_correct: npt.ArrayLike, mated_scores: npt.ArrayLike, nonmated_scores: npt.ArrayLike,
    fpirs: Sequence[float] = FPIR_POINTS,
) -> dict[str, Any]:
    """Rank-1 rate and FNIR (with its threshold) at each FPIR; rates are fractions."""
    out: dict[str, Any] = {
        "rank1": rank1_rate(mated_correct),
        "mated_searches": int(np.size(mated_correct)),
        "nonmated_searches": int(np.size(nonmated_scores)),
    }
    for x in fpirs:
        fnir, t = fnir_at_fpir(mated_correct, mated_scores, nonmated_scores, x)
        out[f"fnir_at_fpir_{x:g}"] = fnir
        out[f"threshold_at_fpir_{x:g}"] = t
    return out


def plot_det(curves: dict[str, tuple[npt.ArrayLike, npt.ArrayLike]], path: Path | str) -> Path:
    """Write a DET plot (FNIR against FPIR, log axes) of the labelled ``(fpir, fnir)`` curves."""
    from faceflow.eval.report import new_figure, save_figure

    fig = new_figure("the DET plot", figsize=(5.5, 4.5))
    ax = fig.subplots()
    for label, (fpir, fnir) in curves.items():
        f, n = np.asarray(fpir), np.asarray(fnir)
        keep = (f > 0) & (n > 0)
        ax.step(f[keep], n[keep], where="post", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FPIR (false positive identification rate)")
    ax.set_ylabel("FNIR (false negative identification rate)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Open-set identification (DET)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


# -- the LFW protocol ---------------------------------------------------------------------------------


def lfw_identities(root: Path | str) -> dict[str, list[Path]]:
    """``<root>/<Person>/<image>.jpg`` -> {person: sorted images}, people sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"LFW folder not found: {root}")
    people = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for d in sorted(root.iterdir()) if d.is_dir()
    }
    people = {k: v for k, v in people.items() if v}
    if not people:
        raise DatasetError(f"no <person>/<image>.jpg folders under {root}")
    return people


@dataclass(frozen=True)
class IdentificationProtocol:
    """Who is enrolled from which image, and which images probe."""

    gallery: list[tuple[str, Path]]
    mated: list[tuple[str, Path]]
    nonmated: list[Path]


def lfw_identification_protocol(people: dict[str, list[Path]]) -> IdentificationProtocol:
    """First image of each person with 2+ images enrolled, the rest mated; one-image people non-mated."""
    gallery = [(name, imgs[0]) for name, imgs in people.items() if len(imgs) >= 2]
    mated = [(name, p) for name, imgs in people.items() if len(imgs) >= 2 for p in imgs[1:]]
    nonmated = [imgs[0] for imgs in people.values() if len(imgs) == 1]
    return IdentificationProtocol(gallery, mated, nonmated)


def embed_all(paths: Sequence[Path], embed_fn: EmbedFn, fallback_fn: EmbedFn | None = None,
              progress: Callable[[int], None] | None = None) -> tuple[dict[Path, npt.NDArray[Any]], dict[str, Any]]:
    """Embeddings of the paths that give one, and counts (failures, errors) for the report."""
    from faceflow.errors import FaceflowError

    out: dict[Path, npt.NDArray[Any]] = {}
    no_face, errors = 0, []
    for i, path in enumerate(paths):
        try:
            emb = embed_fn(path)
            if emb is None:
                no_face += 1
                emb = fallback_fn(path) if fallback_fn is not None else None
        except FaceflowError as exc:
            errors.append({"path": str(path), "error": str(exc)})
            emb = None
        if emb is not None:
            out[path] = np.asarray(emb, np.float32).reshape(-1)
        if progress:
            progress(i + 1)
    return out, {"images": len(paths), "no_face": no_face, "unembedded": len(paths) - len(out), "errors": errors}


def run_identification(
    root: Path | str,
    embed_fn: EmbedFn,
    *,
    fallback_fn: EmbedFn | None = None,
    aggregate: str = "max",
    det_plot: Path | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The LFW open-set identification protocol through a real (in-memory SQLite) gallery.

    ``embed_fn`` gives each image's embedding (``None``: no face; ``fallback_fn`` is then tried).
    Returns the figures of :func:`evaluate_identification`, counts, and the DET curve's path.
    """
    from faceflow.gallery import GalleryFace, open_gallery_store
    from faceflow.gallery.search import Searcher

    protocol = lfw_identification_protocol(lfw_identities(root))
    paths = [p for _, p in protocol.gallery] + [p for _, p in protocol.mated] + protocol.nonmated
    embeddings, counts = embed_all(paths, embed_fn, fallback_fn, (lambda i: progress(i, len(paths))) if progress
                                   else None)
    if not embeddings:
        raise DatasetError("no image gave an embedding")
    dim = next(iter(embeddings.values())).shape[0]
    with open_gallery_store("sqlite:///:memory:") as store:
        store.create_gallery("lfw", "eval", dim)
        enrolled = [GalleryFace(name, embeddings[p], source=str(p)) for name, p in protocol.gallery if p in embeddings]
        store.add_faces("lfw", enrolled, model="eval")
        searcher = Searcher(store, "lfw", aggregate=aggregate, threshold=0.0)  # type: ignore[arg-type]

        def top(items: Sequence[Path]) -> tuple[list[str | None], npt.NDArray[Any]]:
            found = [p for p in items if p in embeddings]
            answers = searcher.identify(np.stack([embeddings[p] for p in found]), top=1) if found else []
            by_path = {p: a for p, a in zip(found, answers, strict=True)}
            names = [by_path[p].candidates[0].subject if p in by_path else None for p in items]
            scores = np.array([by_path[p].candidates[0].similarity if p in by_path else -np.inf for p in items])
            return names, scores

        mated_names, mated_scores = top([p for _, p in protocol.mated])
        _, nonmated_scores = top(protocol.nonmated)
    correct = np.array([got == want for got, (want, _) in zip(mated_names, protocol.mated, strict=True)])
    result = evaluate_identification(correct, mated_scores, nonmated_scores)
    result.update(
        gallery_subjects=len(enrolled), gallery_people=len(protocol.gallery), aggregate=aggregate, **counts,
    )
    if det_plot is not None:
        fpir, fnir, _ = det_curve(correct, mated_scores, nonmated_scores)
        result["det_plot"] = str(plot_det({"LFW": (fpir, fnir)}, det_plot))
    return result
