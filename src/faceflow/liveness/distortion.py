"""Image-distortion features of a face crop, after Wen, Han & Jain, "Face spoof detection with image
distortion analysis" (IEEE TIFS 2015), written for MSU-MFSD and for generalising across databases: a
recaptured face (a print or a screen in front of the camera) picks up specular highlights from the
medium, is blurred by the second optical path and by the printer or display, and loses colour
fidelity and diversity. Pure numpy/OpenCV; every function takes an RGB ``uint8`` crop (or one
channel of it) and returns a small float vector.

* :func:`specular_features` (3): share, mean and spread of the specular pixels;
* :func:`blur_features` (2): the average edge width (Marziliano et al. 2002) and the re-blur
  no-reference metric of Crete et al. 2007;
* :func:`chromatic_moments` (15): per HSV channel mean, deviation, skewness and the share of pixels in
  the histogram's lowest and highest bins;
* :func:`colour_diversity` (:data:`DIVERSITY_TOP` + 1): the sorted shares of the most frequent
  quantised colours and the number of distinct ones.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from faceflow.align import crop_box
from faceflow.liveness.texture import CROP_SCALE, CROP_SIZE

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

DIVERSITY_TOP = 100
"""How many of the most frequent quantised colours :func:`colour_diversity` reports."""
DIVERSITY_LEVELS = 32
"""Quantisation levels per RGB channel for :func:`colour_diversity` (32^3 possible colours)."""
CHROMA_BINS = 32
"""Histogram bins per HSV channel for the min/max-bin shares of :func:`chromatic_moments`."""
IDA_DIMS = 3 + 2 + 15 + DIVERSITY_TOP + 1


def specular_features(rgb: U8) -> F64:
    """[share of specular pixels, their mean intensity, their standard deviation] (intensities in
    [0, 1]). The specular component is approximated by each pixel's darkest channel (what a white
    highlight adds equally to R, G and B, the idea behind specular-free images); a pixel counts as
    specular when that component lies in ``[1.5 mu, 4 mu]``, ``mu`` its mean over the crop (Wen et
    al.'s band, which leaves out the diffuse floor and saturated glare)."""
    spec = rgb.min(axis=2).astype(np.float64) / 255.0
    mu = float(spec.mean())
    mask = (spec >= 1.5 * mu) & (spec <= 4.0 * mu) & (spec > 0)
    if not mask.any():
        return np.zeros(3)
    vals = spec[mask]
    return np.array([float(mask.mean()), float(vals.mean()), float(vals.std())])


def _run_lengths(sign: npt.NDArray[np.int8]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """For each position of each row of ``sign`` (-1, 0, +1): how many equal non-zero signs end there
    (counting from the left) and start there (counting to the right), itself included; 0 where zero."""
    h, w = sign.shape
    left = np.zeros((h, w), np.int64)
    right = np.zeros((h, w), np.int64)
    nz = sign != 0
    left[:, 0] = nz[:, 0]
    for x in range(1, w):
        left[:, x] = np.where(nz[:, x], np.where(sign[:, x] == sign[:, x - 1], left[:, x - 1] + 1, 1), 0)
    right[:, -1] = nz[:, -1]
    for x in range(w - 2, -1, -1):
        right[:, x] = np.where(nz[:, x], np.where(sign[:, x] == sign[:, x + 1], right[:, x + 1] + 1, 1), 0)
    return left, right


def edge_width(grey: U8) -> float:
    """Marziliano's blur measure: the mean width, in pixels, of the vertical edges (Canny edges with a
    strong horizontal gradient), each measured along its row between the local extrema on either side,
    i.e. the length of the monotonic intensity run that crosses the edge. Wider means blurrier; 0 when
    there is no edge."""
    g = cv2.GaussianBlur(grey, (3, 3), 0)
    edges = cv2.Canny(g, 50, 150) > 0
    gx = cv2.Sobel(g, cv2.CV_64F, 1, 0)
    gy = cv2.Sobel(g, cv2.CV_64F, 0, 1)
    vertical = edges & (np.abs(gx) >= np.abs(gy))
    # diff[:, x] is the step from pixel x to x + 1; an edge pixel x sits on the run holding step x
    # (or step x - 1 at the right border)
    diff = np.sign(np.diff(g.astype(np.int16), axis=1)).astype(np.int8)
    left, right = _run_lengths(diff)
    ys, xs = np.nonzero(vertical[:, :-1])
    if not len(ys):
        return 0.0
    widths = left[ys, xs] + right[ys, xs] - 1
    widths = widths[widths > 0]
    return float(widths.mean()) if len(widths) else 0.0


def crete_blur(grey: U8) -> float:
    """Crete et al.'s no-reference blur in [0, 1]: re-blur the image with a 9-tap box filter along each
    axis and measure how much of its neighbour-to-neighbour variation survives; a sharp image loses
    much of it (near 0), an already blurred one little (near 1). The larger of the two axes."""
    f = grey.astype(np.float64)
    out = 0.0
    for axis in (0, 1):
        k = (9, 1) if axis == 1 else (1, 9)  # OpenCV sizes are (width, height)
        b = cv2.blur(f, k, borderType=cv2.BORDER_REFLECT)
        d_f = np.abs(np.diff(f, axis=axis))
        d_b = np.abs(np.diff(b, axis=axis))
        v = np.maximum(0.0, d_f - d_b)
        s_f = float(d_f.sum())
        if s_f > 0:
            out = max(out, (s_f - float(v.sum())) / s_f)
    return out


def blur_features(grey: U8) -> F64:
    """[:func:`edge_width` (log1p), :func:`crete_blur`] of a grey crop."""
    return np.array([np.log1p(edge_width(grey)), crete_blur(grey)])


def chromatic_moments(hsv: U8) -> F64:
    """For H, S and V (OpenCV's 8-bit HSV, each scaled to [0, 1]): mean, standard deviation, skewness,
    and the shares of pixels in the lowest and highest of :data:`CHROMA_BINS` histogram bins (a
    recaptured face has a narrower, clipped colour distribution)."""
    out = []
    for k, top in enumerate((180, 256, 256)):
        raw = hsv[..., k].ravel()
        c = raw.astype(np.float64) / (179.0 if k == 0 else 255.0)
        mean, std = float(c.mean()), float(c.std())
        d = c - mean
        skew = float(np.mean(d * d * d) / std ** 3) if std > 1e-9 else 0.0
        hist = np.bincount(raw.astype(np.int64) * CHROMA_BINS // top, minlength=CHROMA_BINS) / len(c)
        out += [mean, std, skew, float(hist.min()), float(hist.max())]
    return np.array(out)


def colour_diversity(rgb: U8) -> F64:
    """The shares (of all pixels, largest first) of the :data:`DIVERSITY_TOP` most frequent colours
    after quantising each channel to :data:`DIVERSITY_LEVELS` levels (zeros past the last colour), then
    the number of distinct quantised colours over the number of pixels."""
    q = (rgb.astype(np.int64) * DIVERSITY_LEVELS) // 256
    code = (q[..., 0] * DIVERSITY_LEVELS + q[..., 1]) * DIVERSITY_LEVELS + q[..., 2]
    counts = np.bincount(code.ravel(), minlength=DIVERSITY_LEVELS ** 3)
    n = code.size
    top = np.sort(counts)[::-1][:DIVERSITY_TOP] / n
    return np.concatenate([top, [np.count_nonzero(counts) / n]])


def ida_features(rgb: U8) -> F64:
    """All the image-distortion features of an RGB crop (:data:`IDA_DIMS`): specular, blur, chromatic
    moments (HSV), colour diversity."""
    grey = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), np.uint8)
    hsv = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV), np.uint8)
    return np.concatenate([specular_features(rgb), blur_features(grey), chromatic_moments(hsv),
                           colour_diversity(rgb)])


def face_distortion(image: U8, box: npt.ArrayLike) -> F64:
    """:func:`ida_features` of the same face crop the texture model reads (its scale and size)."""
    return ida_features(crop_box(image, box, CROP_SCALE, CROP_SIZE))
