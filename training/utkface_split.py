"""Write the committed UTKFace split: ``training/splits/utkface_{train,val,test}.txt``.

    .venv/bin/python training/utkface_split.py --root ../shared/datasets/utkface

Deterministic and independent of any model: each image goes where its *session group* goes. The
groups are taken in the order of ``sha1("utkface-split-v1:" + group)`` (a fixed pseudo-random order)
and dealt out whole: to test until it holds 15 % of the images, then to val until it holds 15 %, the
rest to train (about 70/15/15 whatever the group sizes).

The group is the date field's first :data:`GROUP_DIGITS` digits (``yyyymmddHHMM``: one minute of the
UTKFace authors' processing). UTKFace has no identity labels, so an identity-disjoint split cannot be
guaranteed: one person may appear in several groups and so on both sides. What this does guarantee is
that frames cut in one session stay on one side: 12 pairs of images share the whole time stamp (two
labels for one photo, or two faces of one photo), and 5 seconds hold 6 to 32 images each cut
in one burst. ``--check FEATURES`` (the feature cache of ``training/train_attribute_heads.py``)
reports how many held-out images still have a near-duplicate (SFace cosine >= 0.6) on the train side.
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from pathlib import Path

from faceflow.eval.utkface import load_utkface

GROUP_DIGITS = 12
"""Digits of the date field (``yyyymmddHHMMSSFFF``) that make a session group: to the minute."""
HELD_OUT = (("test", 0.15), ("val", 0.15))
"""The held-out parts, filled in this order, and their share of the images; train takes the rest."""
PARTS = ("train", "val", "test")
SALT = "utkface-split-v1:"
SPLITS = Path(__file__).resolve().parent / "splits"
NEAR_DUPLICATE = 0.6
"""SFace cosine similarity above which ``--check`` calls two images near-duplicates."""


def group_of(name: str) -> str:
    """The session group of a UTKFace file name: the first :data:`GROUP_DIGITS` digits of its date."""
    return name.split("_")[3].split(".")[0][:GROUP_DIGITS]


def split_names(names: list[str]) -> dict[str, list[str]]:
    """``{part: sorted file names}``: whole groups in salted-sha1 order, test and val first."""
    groups: dict[str, list[str]] = {}
    for n in sorted(names):
        groups.setdefault(group_of(n), []).append(n)
    order = sorted(groups, key=lambda g: hashlib.sha1((SALT + g).encode()).hexdigest())
    out: dict[str, list[str]] = {part: [] for part in PARTS}
    quota = iter(HELD_OUT)
    part, share = next(quota)
    for g in order:
        while part != "train" and len(out[part]) >= share * len(names):
            part, share = next(quota, ("train", 1.0))
        out[part].extend(groups[g])
    return {part: sorted(v) for part, v in out.items()}


def header(part: str, names: list[str], groups: int) -> str:
    """The comment block at the top of a split file."""
    return (
        f"# UTKFace {part} part: {len(names)} images in {groups} session groups; written by "
        "training/utkface_split.py\n# (group = first 12 digits of the date field, dealt out whole in "
        "sha1 order; see that script).\n"
        "# No identity labels exist: the parts are session-disjoint, not identity-disjoint.\n"
    )


def check(parts: dict[str, list[str]], features: Path) -> None:
    """Print, for val and test, how many images have a near-duplicate (by SFace) in train."""
    import numpy as np

    data = np.load(features)
    index = {str(n): i for i, n in enumerate(data["names"])}
    emb = data["sface"]

    def rows(part: str) -> np.ndarray:
        idx = np.array([index[n] for n in parts[part]])
        return emb[idx[data["found"][idx]]]

    train = rows("train")
    for part in ("val", "test"):
        best = (rows(part) @ train.T).max(1)
        print(f"{part}: {int((best >= NEAR_DUPLICATE).sum())} of {len(best)} faces have a train face with "
              f"SFace cosine >= {NEAR_DUPLICATE} (median best {float(np.median(best)):.3f})")


def main(argv: list[str] | None = None) -> None:
    """Write the three split files (and optionally check them for near-duplicates)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("../shared/datasets/utkface"))
    p.add_argument("--out", type=Path, default=SPLITS)
    p.add_argument("--check", type=Path, metavar="FEATURES", help="feature cache for the near-duplicate report")
    args = p.parse_args(argv)
    images, skipped = load_utkface(args.root)
    parts = split_names([im.path.name for im in images])
    args.out.mkdir(parents=True, exist_ok=True)
    for part, names in parts.items():
        groups = len({group_of(n) for n in names})
        (args.out / f"utkface_{part}.txt").write_text(header(part, names, groups) + "".join(f"{n}\n" for n in names))
        ages = Counter(min(int(n.split("_")[0]) // 20, 4) for n in names)
        print(f"{part}: {len(names)} images, {groups} groups, female {sum(n.split('_')[1] == '1' for n in names)}, "
              f"ages by 20 years {[ages[k] for k in range(5)]}")
    if skipped:
        print(f"{skipped} names did not parse and are in no part")
    if args.check:
        check(parts, args.check)


if __name__ == "__main__":
    main()
