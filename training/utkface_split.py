"""Write the committed UTKFace split: ``training/splits/utkface_{train,val,test}.txt``.

    .venv/bin/python training/utkface_split.py                        # from the committed links
    .venv/bin/python training/utkface_split.py --links-from FEATURES  # recompute the links first

UTKFace has no identity labels, so an identity-disjoint split cannot be guaranteed. Two things keep
related images on one side; each image goes where its *cluster* goes:

1. Session groups: the date field's first :data:`GROUP_DIGITS` digits (``yyyymmddHHMMSS``, one second
   of the UTKFace authors' processing). 12 pairs of images share the whole time stamp (one photo
   labelled twice, or two faces of one photo) and 5 single seconds hold bursts of 6 to 32 images.
   (Whole minutes would chain through the links below into one cluster of 354 images.)
2. Look-alike links (``splits/utkface_links.txt``, committed): pairs whose SFace embeddings (faceflow's
   YuNet face nearest the centre, from the feature cache of ``training/train_attribute_heads.py``)
   have cosine >= :data:`LINK_ANY`, or >= :data:`LINK_ADULT` when both labelled ages are at least
   :data:`ADULT_AGE`. On these 4,000 images the adult pairs from 0.5 up are 97-100 % the same labelled
   gender (so mostly one person, often the same photo cropped twice); SFace cannot tell small children
   apart (its pairs at 0.6-0.7 involving a child are 60 % same gender), so they link only from 0.7.
   Pairs below the thresholds, and people whose photos look less alike, may still straddle the parts.

Session groups joined by a link form one cluster. The clusters are taken in the order of
``sha1("utkface-split-v1:" + key)`` (key: the cluster's first session group; a fixed pseudo-random
order) and dealt out whole: to test until it holds 15 % of the images, then to val until it holds
15 %, the rest to train. Given the names and the links file this is deterministic and uses no model.
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from faceflow.eval.utkface import load_utkface

GROUP_DIGITS = 14
"""Digits of the date field (``yyyymmddHHMMSSFFF``) that make a session group: to the second."""
HELD_OUT = (("test", 0.15), ("val", 0.15))
"""The held-out parts, filled in this order, and their share of the images; train takes the rest."""
PARTS = ("train", "val", "test")
SALT = "utkface-split-v1:"
SPLITS = Path(__file__).resolve().parent / "splits"
LINKS = SPLITS / "utkface_links.txt"
LINK_ANY, LINK_ADULT, ADULT_AGE = 0.7, 0.5, 13
"""SFace cosine that links any two images; the lower one for two images both labelled this age or older."""

Link = tuple[str, str]


def group_of(name: str) -> str:
    """The session group of a UTKFace file name: the first :data:`GROUP_DIGITS` digits of its date."""
    return name.split("_")[3].split(".")[0][:GROUP_DIGITS]


def clusters(names: Iterable[str], links: Iterable[Link] = ()) -> dict[str, list[str]]:
    """``{key: sorted names}``: session groups merged along ``links``; key = the cluster's first group."""
    parent: dict[str, str] = {}

    def root(g: str) -> str:
        while parent.setdefault(g, g) != g:
            g = parent[g]
        return g

    names = sorted(names)
    for n in names:
        root(group_of(n))
    for a, b in links:
        ra, rb = root(group_of(a)), root(group_of(b))
        parent[max(ra, rb)] = min(ra, rb)
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(root(group_of(n)), []).append(n)
    return out


def split_names(names: list[str], links: Iterable[Link] = ()) -> dict[str, list[str]]:
    """``{part: sorted file names}``: whole clusters in salted-sha1 order, test and val first."""
    groups = clusters(names, links)
    order = sorted(groups, key=lambda g: hashlib.sha1((SALT + g).encode()).hexdigest())
    out: dict[str, list[str]] = {part: [] for part in PARTS}
    quota = iter(HELD_OUT)
    part, share = next(quota)
    for g in order:
        while part != "train" and len(out[part]) >= share * len(names):
            part, share = next(quota, ("train", 1.0))
        out[part].extend(groups[g])
    return {part: sorted(v) for part, v in out.items()}


def _age(name: str) -> int:
    return int(name.split("_")[0])


def _embeddings(features: Path) -> tuple[list[str], npt.NDArray[np.float64]]:
    """File names and SFace embeddings (zero where no face was found) from the feature cache."""
    data = np.load(features)
    emb = np.where(data["found"][:, None], data["sface"], 0.0).astype(np.float64)
    return [str(n) for n in data["names"]], emb


def find_links(features: Path) -> list[tuple[str, str, float]]:
    """Every pair over the link thresholds, as ``(name, name, cosine)`` sorted by names."""
    names, emb = _embeddings(features)
    sim = np.triu(emb @ emb.T, 1)
    adult = np.array([_age(n) >= ADULT_AGE for n in names])
    linked = (sim >= LINK_ANY) | ((sim >= LINK_ADULT) & adult[:, None] & adult[None, :])
    return sorted((names[i], names[j], round(float(sim[i, j]), 4)) for i, j in zip(*np.nonzero(linked), strict=True))


def read_links(path: Path = LINKS) -> list[Link]:
    """The committed links (``name name cosine`` per line, ``#`` comments)."""
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return [(r[0], r[1]) for r in rows]


def write_links(links: list[tuple[str, str, float]], path: Path = LINKS) -> None:
    head = (
        f"# {len(links)} look-alike links between UTKFace images (SFace cosine >= {LINK_ANY}, or >= {LINK_ADULT} "
        f"when both are labelled {ADULT_AGE}+),\n# written by training/utkface_split.py --links-from; "
        "linked images stay in one part of the split.\n"
    )
    path.write_text(head + "".join(f"{a} {b} {s:.4f}\n" for a, b, s in links))


def check(parts: dict[str, list[str]], features: Path) -> None:
    """Print, for val and test, how many faces have a look-alike in train at a few SFace cosines."""
    names, emb = _embeddings(features)
    index = {n: i for i, n in enumerate(names)}
    train = emb[[index[n] for n in parts["train"]]]
    for part in ("val", "test"):
        best = (emb[[index[n] for n in parts[part]]] @ train.T).max(1)
        counts = ", ".join(f">= {t}: {int((best >= t).sum())}" for t in (0.4, 0.5, 0.6, 0.7))
        print(f"{part}: faces with a train face at SFace cosine {counts} (of {len(best)})")


def main(argv: list[str] | None = None) -> None:
    """Write the three split files (and optionally the links first, and a look-alike check after)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("../shared/datasets/utkface"))
    p.add_argument("--out", type=Path, default=SPLITS)
    p.add_argument("--links-from", type=Path, metavar="FEATURES", help="recompute the links from a feature cache")
    p.add_argument("--check", type=Path, metavar="FEATURES", help="feature cache for the look-alike report")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    links_path = args.out / LINKS.name
    if args.links_from:
        write_links(find_links(args.links_from), links_path)
    links = read_links(links_path)
    images, skipped = load_utkface(args.root)
    parts = split_names([im.path.name for im in images], links)
    cluster_of = {n: k for k, v in clusters([im.path.name for im in images], links).items() for n in v}
    for part, names in parts.items():
        n_clusters = len({cluster_of[n] for n in names})
        head = (
            f"# UTKFace {part} part: {len(names)} images in {n_clusters} clusters (session seconds joined by "
            f"look-alike links),\n# written by training/utkface_split.py. No identity labels exist: the parts are "
            "session- and look-alike-disjoint, not identity-disjoint.\n"
        )
        (args.out / f"utkface_{part}.txt").write_text(head + "".join(f"{n}\n" for n in names))
        ages = Counter(min(_age(n) // 20, 4) for n in names)
        female = sum(n.split("_")[1] == "1" for n in names)
        print(f"{part}: {len(names)} images, {n_clusters} clusters, female {female}, "
              f"ages 0-19/20-39/40-59/60-79/80+ {[ages[k] for k in range(5)]}")
    print(f"{len(links)} links")
    if skipped:
        print(f"{skipped} names did not parse and are in no part")
    if args.check:
        check(parts, args.check)


if __name__ == "__main__":
    main()
