"""Open-set identification metrics on hand-checked numbers, and the LFW protocol on a fake LFW tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceflow.eval.identification import (
    det_curve,
    evaluate_identification,
    fnir_at,
    fnir_at_fpir,
    fpir_at,
    lfw_identification_protocol,
    lfw_identities,
    plot_det,
    rank1_rate,
    run_identification,
    threshold_at_fpir,
)

CORRECT = [True, True, False, True]
MATED = [0.9, 0.5, 0.8, 0.3]
NONMATED = [0.6, 0.4, 0.2, 0.1, -np.inf]  # the last probe had no face: never a false positive


def test_rank1_fpir_fnir_by_hand() -> None:
    assert rank1_rate(CORRECT) == 0.75
    assert fpir_at(NONMATED, 0.4) == pytest.approx(2 / 5)
    assert fpir_at(NONMATED, 0.41) == pytest.approx(1 / 5)
    # at 0.5: 0.9 (right) and 0.5 (right) hit; 0.8 is the wrong person; 0.3 is too low
    assert fnir_at(CORRECT, MATED, 0.5) == 0.5
    assert fnir_at(CORRECT, MATED, -1.0) == 0.25  # only the wrong-person search misses


def test_fnir_at_fpir_by_hand() -> None:
    # FPIR <= 0.2 of 5 searches allows one false positive: the threshold goes just above 0.4
    fnir, t = fnir_at_fpir(CORRECT, MATED, NONMATED, 0.2)
    assert 0.4 < t <= np.nextafter(0.4, 1) and fnir == 0.5
    fnir, t = fnir_at_fpir(CORRECT, MATED, NONMATED, 0.0)  # nothing may pass: just above 0.6
    assert 0.6 < t < 0.6001 and fnir == 0.75
    assert threshold_at_fpir([0.5, 0.5, 0.5, 0.1], 0.5) > 0.5  # ties cannot be split: all must fail
    r = evaluate_identification(CORRECT, MATED, NONMATED, fpirs=(0.2,))
    assert r["rank1"] == 0.75 and r["fnir_at_fpir_0.2"] == 0.5 and r["nonmated_searches"] == 5


def test_det_curve_matches_the_pointwise_rates(tmp_path: Path) -> None:
    fpir, fnir, t = det_curve(CORRECT, MATED, NONMATED)
    assert np.all(np.diff(t) > 0)
    for f, n, x in zip(fpir, fnir, t, strict=True):
        assert f == pytest.approx(fpir_at(NONMATED, x)) and n == pytest.approx(fnir_at(CORRECT, MATED, x))
    path = plot_det({"toy": (fpir, fnir)}, tmp_path / "det.png")
    assert path.stat().st_size > 1000


def _fake_lfw(root: Path, counts: dict[str, int]) -> None:
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(1, n + 1):
            (root / name / f"{name}_{i:04d}.jpg").write_bytes(b"x")


def test_lfw_protocol_split(tmp_path: Path) -> None:
    _fake_lfw(tmp_path, {"Ann": 3, "Bob": 1, "Cy": 2, "Di": 1})
    p = lfw_identification_protocol(lfw_identities(tmp_path))
    assert [(n, x.name) for n, x in p.gallery] == [("Ann", "Ann_0001.jpg"), ("Cy", "Cy_0001.jpg")]
    assert [x.name for _, x in p.mated] == ["Ann_0002.jpg", "Ann_0003.jpg", "Cy_0002.jpg"]
    assert [x.name for x in p.nonmated] == ["Bob_0001.jpg", "Di_0001.jpg"]


def test_run_identification_with_a_fake_embedder(tmp_path: Path) -> None:
    """Each person has a direction; one of Cy's probes finds no face; Di looks a bit like Ann."""
    _fake_lfw(tmp_path, {"Ann": 3, "Bob": 1, "Cy": 2, "Di": 1})
    direction = {"Ann": [1, 0, 0, 0], "Bob": [0, 0, 1, 0], "Cy": [0, 1, 0, 0], "Di": [0.6, 0, 0, 0.8]}

    def embed(path: Path) -> np.ndarray | None:
        return None if path.name == "Cy_0002.jpg" else np.array(direction[path.parent.name], np.float32)

    r = run_identification(tmp_path, embed, det_plot=tmp_path / "det.png")
    assert r["rank1"] == pytest.approx(2 / 3)  # Ann's two probes right, Cy's probe has no face
    assert r["no_face"] == 1 and r["gallery_subjects"] == 2 and r["nonmated_searches"] == 2
    assert r["fnir_at_fpir_0.01"] == pytest.approx(1 / 3)  # the threshold goes above Di's 0.6
    assert Path(r["det_plot"]).exists()
