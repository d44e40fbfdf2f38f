"""The colour-texture liveness model trained here: hand-made features of a face crop into an
L2-regularised logistic regression, all in numpy.

Features of a square crop around the face (:data:`CROP_SCALE` times the detector's box, resized to
:data:`CROP_SIZE` pixels):

* uniform LBP(8, 1) histograms (59 bins) of each channel of HSV and YCbCr: printed and replayed faces
  lose fine skin texture and shift chroma (Boulkenafet et al., "Face spoofing detection using colour
  texture analysis", 2016), square-rooted (Hellinger) so a linear model compares them sensibly;
* the radial energy profile of the grey crop's spectrum (windowed FFT) and two moire/recapture cues:
  the peak-to-median ratio of the high-frequency band and the high-to-low energy ratio;
* colour moments (mean and standard deviation of saturation, Cb and Cr) and the log variance of the
  Laplacian (sharpness).

The vector is laid out in named :data:`BLOCKS`. A :class:`Recipe` says which blocks of a feature
vector a model reads and its L2 strength; a training side chooses its recipe from a menu
(:func:`faceflow.eval.antispoof.select_recipe`).

:func:`fit_logistic` (Newton's method) is the one training routine: ``training/train_liveness_texture.py``
uses it for the shipped model and :mod:`faceflow.eval.antispoof` uses it to train on each protocol's
training side only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.align import crop_box
from faceflow.models.npz import npz_bytes
from faceflow.types import Image

F64 = npt.NDArray[np.float64]

CROP_SCALE = 1.0
LBP_DIMS = 6 * 59
"""The leading features are the six LBP histograms."""
CROP_SIZE = 128
FREQ_BANDS = 16
SPECTRAL_DIMS = FREQ_BANDS + 2 + 6 + 1


def layout(sizes: dict[str, int]) -> dict[str, slice]:
    """Named consecutive blocks of the given sizes, in order."""
    out, at = {}, 0
    for name, n in sizes.items():
        out[name] = slice(at, at + n)
        at += n
    return out


BLOCKS: dict[str, slice] = layout({"lbp": LBP_DIMS, "spectral": SPECTRAL_DIMS})
"""Where each feature group sits in :func:`crop_features`' vector: ``lbp`` (colour LBP, HSV and
YCbCr), ``spectral`` (spectrum, moire cues, colour moments, sharpness)."""
FEATURE_DIMS = LBP_DIMS + SPECTRAL_DIMS


def _uniform_table() -> npt.NDArray[np.int64]:
    """LBP code (0-255) -> bin: the 58 uniform patterns (at most two 0/1 transitions) get their own bin
    in increasing code order, every other pattern shares bin 58."""
    table = np.full(256, 58, np.int64)
    nxt = 0
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        if sum(bits[i] != bits[(i + 1) % 8] for i in range(8)) <= 2:
            table[code] = nxt
            nxt += 1
    return table


_UNIFORM = _uniform_table()
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def lbp_codes(channel: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """LBP(8, 1) code of every interior pixel: bit ``i`` is set when neighbour ``i`` (clockwise from the
    top-left) is at least the centre."""
    c = channel.astype(np.int16)
    centre = c[1:-1, 1:-1]
    h, w = centre.shape
    code = np.zeros((h, w), np.int64)
    for bit, (dy, dx) in enumerate(_OFFSETS):
        code |= (c[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] >= centre).astype(np.int64) << bit
    return code


def lbp_histogram(channel: npt.NDArray[np.uint8]) -> F64:
    """Normalised 59-bin uniform-LBP histogram of one channel."""
    hist = np.bincount(_UNIFORM[lbp_codes(channel)].ravel(), minlength=59).astype(np.float64)
    return np.asarray(hist / max(float(hist.sum()), 1.0), np.float64)


def frequency_features(grey: npt.NDArray[np.uint8]) -> F64:
    """Radial energy profile (:data:`FREQ_BANDS` bands, normalised to sum 1) of the Hann-windowed
    spectrum, the high band's peak-to-median ratio (log) and the high-to-low energy ratio (log)."""
    g = grey.astype(np.float64)
    g = g - g.mean()
    win = np.outer(np.hanning(g.shape[0]), np.hanning(g.shape[1]))
    power = np.abs(np.fft.fftshift(np.fft.fft2(g * win))) ** 2
    h, w = power.shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    inside = r <= 1.0
    band = np.minimum((r * FREQ_BANDS).astype(np.int64), FREQ_BANDS - 1)
    energy = np.bincount(band[inside], weights=power[inside], minlength=FREQ_BANDS)
    profile = energy / max(energy.sum(), 1e-12)
    high = power[(r > 0.35) & inside]
    peak = np.log((high.max() + 1e-9) / (np.median(high) + 1e-9))
    ratio = np.log((power[(r > 0.35) & inside].sum() + 1e-9) / (power[(r > 0.02) & (r <= 0.35)].sum() + 1e-9))
    return np.concatenate([np.sqrt(profile), [peak, ratio]])


def crop_features(crop: Image) -> F64:
    """The feature vector of one RGB face crop (:data:`CROP_SIZE` square)."""
    hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)
    ycc = cv2.cvtColor(crop, cv2.COLOR_RGB2YCrCb)
    hists = [np.sqrt(lbp_histogram(np.ascontiguousarray(space[..., k]))) for space in (hsv, ycc) for k in range(3)]
    grey = np.asarray(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), np.uint8)
    moments = []
    for chan in (hsv[..., 1], ycc[..., 1], ycc[..., 2]):
        moments += [float(chan.mean()) / 255.0, float(chan.std()) / 255.0]
    sharp = np.log(float(cv2.Laplacian(grey, cv2.CV_64F).var()) + 1.0)
    return np.concatenate([*hists, frequency_features(grey), moments, [sharp]])


def face_features(image: Image, box: npt.ArrayLike, scale: float = CROP_SCALE) -> F64:
    """:func:`crop_features` of the crop around ``box`` (``scale`` times its size)."""
    return crop_features(crop_box(image, box, scale, CROP_SIZE))


@dataclass(frozen=True)
class LinearModel:
    """``score = sigmoid(w . (x - mean) / scale + b)``: the live probability; ``threshold`` is the score
    at which the model's training side had equal error rates."""

    mean: F64
    scale: F64
    weights: F64
    bias: float
    threshold: float

    def logit(self, x: npt.ArrayLike) -> F64:
        a = np.atleast_2d(np.asarray(x, np.float64))
        return np.asarray(((a - self.mean) / self.scale) @ self.weights + self.bias, np.float64)

    def score(self, x: npt.ArrayLike) -> F64:
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(self.logit(x), -50, 50))), np.float64)

    def to_bytes(self) -> bytes:
        """A zip of ``.npy`` arrays with fixed timestamps: the same model gives the same bytes."""
        arrays = {"mean": self.mean, "scale": self.scale, "weights": self.weights,
                  "bias": np.array([self.bias]), "threshold": np.array([self.threshold])}
        return npz_bytes({name: np.asarray(arr, np.float64) for name, arr in arrays.items()})

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearModel:
        with np.load(io.BytesIO(data)) as z:
            return cls(z["mean"], z["scale"], z["weights"], float(z["bias"][0]), float(z["threshold"][0]))


@dataclass(frozen=True)
class Recipe:
    """Which named blocks of a feature vector a linear model reads (``layout`` says where they are) and
    its L2 strength."""

    blocks: tuple[str, ...]
    l2: float
    layout: tuple[tuple[str, int, int], ...]
    """(name, start, stop) of every block of the vector the recipe indexes."""

    @classmethod
    def of(cls, blocks: tuple[str, ...], l2: float, where: dict[str, slice]) -> Recipe:
        return cls(blocks, l2, tuple((n, int(s.start), int(s.stop)) for n, s in where.items()))

    def columns(self) -> npt.NDArray[np.int64]:
        where = {n: (a, b) for n, a, b in self.layout}
        return np.concatenate([np.arange(*where[b]) for b in self.blocks])

    def __str__(self) -> str:
        return f"{'+'.join(self.blocks)} l2={self.l2:g}"


L2_MENU = (100.0, 10.0, 1.0)
"""The L2 strengths a training side chooses from (strongest first: ties go to it)."""


def fit_recipe(x: npt.ArrayLike, live: npt.ArrayLike, recipe: Recipe) -> LinearModel:
    """:func:`fit_logistic` on ``recipe``'s columns of the feature vectors ``x``, returned as a model
    over the whole vector (zero weight on the columns it does not read)."""
    a = np.asarray(x, np.float64)
    cols = recipe.columns()
    m = fit_logistic(a[:, cols], live, l2=recipe.l2)
    mean, scale, weights = np.zeros(a.shape[1]), np.ones(a.shape[1]), np.zeros(a.shape[1])
    mean[cols], scale[cols], weights[cols] = m.mean, m.scale, m.weights
    return LinearModel(mean, scale, weights, m.bias, m.threshold)


def fit_logistic(x: npt.ArrayLike, live: npt.ArrayLike, *, l2: float = 1.0, iterations: int = 50) -> LinearModel:
    """L2-regularised logistic regression (Newton's method) on standardised ``x``; classes weighted to
    balance. ``threshold`` is set at the equal-error point of the model's own training scores (callers
    that can afford it replace it by one from held-out scores, see :func:`equal_error_threshold`)."""
    a = np.asarray(x, np.float64)
    y = np.asarray(live, np.float64)
    if a.ndim != 2 or len(a) != len(y) or len(np.unique(y)) != 2:
        raise ValueError("fit_logistic needs a 2-D feature array and both classes")
    mean = a.mean(axis=0)
    scale = a.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (a - mean) / scale
    # with more features than samples the penalised solution lies in the span of the samples: fit in
    # the thin SVD's coordinates (exactly the same optimum, a much smaller Newton system)
    basis = None
    if z.shape[1] > z.shape[0]:
        u, sv, vt = np.linalg.svd(z, full_matrices=False)
        z, basis = u * sv, vt
    z = np.hstack([z, np.ones((len(a), 1))])
    sw = np.where(y > 0.5, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0
    beta = np.zeros(z.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(z @ beta, -50, 50)))
        grad = z.T @ (sw * (p - y)) + reg * beta
        hess = (z * (sw * p * (1 - p))[:, None]).T @ z + np.diag(reg) + 1e-9 * np.eye(z.shape[1])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    weights = beta[:-1] if basis is None else basis.T @ beta[:-1]
    model = LinearModel(mean, scale, weights, float(beta[-1]), 0.5)
    thr = equal_error_threshold(model.score(a), y > 0.5)
    return LinearModel(mean, scale, weights, float(beta[-1]), thr)


def equal_error_threshold(scores: npt.ArrayLike, live: npt.ArrayLike) -> float:
    """The threshold (``live`` when ``score >= threshold``) where the fraction of attacks accepted and of
    live faces rejected are closest; the midpoint between neighbouring scores, so it generalises."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(live, bool)
    cand = np.unique(s)
    mids = np.concatenate([[cand[0] - 1e-6], (cand[1:] + cand[:-1]) / 2, [cand[-1] + 1e-6]])
    neg, pos = np.sort(s[~y]), np.sort(s[y])
    apcer = 1.0 - np.searchsorted(neg, mids, "left") / max(len(neg), 1)  # attacks at or above each threshold
    bpcer = np.searchsorted(pos, mids, "left") / max(len(pos), 1)  # live faces below it
    gap = np.abs(apcer - bpcer) + 1e-9 * (apcer + bpcer)
    return float(mids[int(np.argmin(gap))])
