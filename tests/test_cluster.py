"""Clustering: constrained average linkage, incremental updates, and the clustering metrics."""

from __future__ import annotations

import numpy as np
import pytest

from faceflow.errors import ConfigError
from faceflow.eval.clustering import bcubed_prf, evaluate_clustering, lfw_tuning_half, pairwise_prf, run_clustering
from faceflow.gallery.cluster import average_linkage, cannot_link_violations, cluster_threshold, update_clusters


def partition(labels) -> set[frozenset[int]]:  # type: ignore[no-untyped-def]
    labels = np.asarray(labels)
    return {frozenset(np.flatnonzero(labels == v).tolist()) for v in np.unique(labels)}


@pytest.mark.parametrize(("n", "threshold"), [(40, 0.1), (200, 0.3), (200, 0.6)])
def test_same_as_scipy_average_linkage_without_constraints(n: int, threshold: float) -> None:
    from scipy.cluster.hierarchy import fcluster, linkage

    x = np.random.default_rng(n).standard_normal((n, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ours = average_linkage(x, list(range(n)), threshold)
    ref = fcluster(linkage(x, method="average", metric="cosine"), 1 - threshold, criterion="distance")
    assert partition(ours) == partition(ref)


def test_faces_of_one_photo_never_share_a_cluster() -> None:
    # twins in one photo (identical embeddings) and a third face near both, in another photo
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.99, 0.14]])
    labels = average_linkage(x, ["p1", "p1", "p2"], 0.5)
    assert labels[0] != labels[1] and len(set(labels)) == 2
    assert cannot_link_violations(labels, ["p1", "p1", "p2"]) == 0
    assert len(set(average_linkage(x, ["p1", "p2", "p3"], 0.5))) == 1  # in separate photos they merge


@pytest.mark.parametrize("threshold", [float("nan"), float("-inf"), -1.5, 1.5])
def test_a_threshold_that_is_no_cosine_similarity_is_refused(threshold: float) -> None:
    """A NaN threshold passes no ``s < threshold`` test, so every face merged with every other photo's
    (people who look nothing alike in one cluster). It, infinities and values outside [-1, 1] are refused."""
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    with pytest.raises(ConfigError, match=r"cosine similarity in \[-1, 1\]"):
        average_linkage(x, ["p1", "p2", "p3"], threshold)
    with pytest.raises(ConfigError, match=r"cosine similarity in \[-1, 1\]"):
        update_clusters(x, ["p1", "p2", "p3"], [-1, -1, -1], threshold)
    assert len(set(average_linkage(x, ["p1", "p2", "p3"], -1.0))) == 1  # the ends of the range still work
    assert len(set(average_linkage(x, ["p1", "p2", "p3"], 1.0))) == 3


def test_folder_clustering_options_are_checked() -> None:
    """``faceflow cluster`` took any --threshold, --min-size, --min-face and --min-score (``faceflow gallery
    cluster`` refuses the same values): NaN merged everyone and wrote ``"threshold": NaN``, which is not JSON."""
    from faceflow.gallery.folders import ClusterOptions

    assert ClusterOptions(threshold=-1.0, min_face=0.0, min_score=0.0, min_cluster_size=1).threshold == -1.0
    for bad in ({"threshold": float("nan")}, {"threshold": 1.01}, {"min_cluster_size": 0},
                {"min_face": float("nan")}, {"min_score": float("nan")}):
        with pytest.raises(ConfigError):
            ClusterOptions(**bad)  # type: ignore[arg-type]


def test_constraint_holds_on_random_photo_library() -> None:
    rng = np.random.default_rng(1)
    people = rng.standard_normal((20, 32))
    # 150 photos of 1 to 4 different people each
    cast = [rng.choice(20, size=int(rng.integers(1, 5)), replace=False) for _ in range(150)]
    who = np.concatenate(cast)
    photos = [i for i, c in enumerate(cast) for _ in c]
    x = people[who] + 0.8 * rng.standard_normal((len(who), 32))
    labels = average_linkage(x, photos, 0.3)
    assert cannot_link_violations(labels, photos) == 0
    assert pairwise_prf(who.tolist(), labels.tolist())[2] > 0.8


def test_incremental_update_keeps_ids_and_only_grows() -> None:
    rng = np.random.default_rng(2)
    people = rng.standard_normal((5, 16))
    who = np.repeat(np.arange(5), 8)
    x = people[who] + 0.3 * rng.standard_normal((40, 16))
    first = update_clusters(x[:30], list(range(30)), [-1] * 30, 0.5)
    assert partition(first) == partition(who[:30])
    ids = np.concatenate([first + 10, [-1] * 10])  # earlier ids need not start at 0
    second = update_clusters(x, list(range(40)), ids, 0.5)
    np.testing.assert_array_equal(second[:30], first + 10)  # nobody moved, ids kept
    assert partition(second) == partition(who)  # the new faces joined their people ...
    person_of_new = {who[i]: second[i] for i in range(30, 40)}
    assert all(person_of_new[p] == second[np.flatnonzero(who[:30] == p)[0]] for p in person_of_new if p < 4)
    stranger = update_clusters(np.vstack([x, -people[:1]]), list(range(41)), np.append(second, -1), 0.5)
    assert stranger[-1] == second.max() + 1  # ... and a new person gets a new id


def test_pairwise_and_bcubed_by_hand() -> None:
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = [1, 1, 2, 2, 2, -1]  # -1: unassigned, scored as a singleton
    # pairs together: (a1,a2) right; (a3,b1), (a3,b2) wrong, (b1,b2) right -> 2 of 4; true pairs: 3 + 1
    assert pairwise_prf(truth, pred) == pytest.approx((0.5, 0.5, 0.5))
    # BCubed precision: a1,a2: 1; a3: 1/3; b1,b2: 2/3; c: 1 -> 14/3 / 6; recall by symmetry here also 7/9
    assert bcubed_prf(truth, pred) == pytest.approx((7 / 9, 7 / 9, 7 / 9))
    perfect = evaluate_clustering(truth, ["x", "x", "x", "y", "y", "z"])
    assert perfect["pairwise_f"] == 1.0 and perfect["bcubed_f"] == 1.0 and perfect["clusters"] == 3
    lumped = evaluate_clustering(truth, [0] * 6)
    assert lumped["pairwise_recall"] == 1.0 and lumped["pairwise_precision"] == pytest.approx(4 / 15)
    assert lumped["bcubed_precision"] == pytest.approx((3 * 3 / 6 + 2 * 2 / 6 + 1 / 6) / 6)


def test_every_model_has_its_own_clustering_threshold() -> None:
    from faceflow.recognize import EMBEDDERS

    fitted = {m: cluster_threshold(m) for m in EMBEDDERS if m != "dlib_int8"}
    assert fitted == {"sface": 0.45, "dlib": 0.925, "fused": 0.80, "sface_int8": 0.45, "fused_int8": 0.80}
    # dlib_int8 is not fitted (not a default anywhere): the caller must pass one
    with pytest.raises(ConfigError, match=r"no clustering threshold is known for model 'dlib_int8'.*pass one"):
        cluster_threshold("dlib_int8")
    with pytest.raises(ConfigError, match="no clustering threshold is known for model 'arcface'"):
        cluster_threshold("arcface")


def test_lfw_tuning_half_is_by_the_sha1_of_the_name() -> None:
    # sha1 first hex digits: Ann 2, Cy c, Hal 4 (even: tuning half); Bob d, Di f, Eve 9 (odd: held out)
    assert [lfw_tuning_half(n) for n in ("Ann", "Cy", "Hal", "Bob", "Di", "Eve")] == [True] * 3 + [False] * 3


def test_lfw_clustering_scores_the_held_out_half_by_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Ann (tuning half) looks like Bob (held out): scoring everyone merges them, the held-out half
    (Bob, Di, Eve) never sees Ann, and the result says which people it scored."""
    counts = {"Ann": 2, "Bob": 3, "Cy": 2, "Di": 1, "Eve": 2}
    for name, n in counts.items():
        (tmp_path / name).mkdir()
        for i in range(1, n + 1):
            (tmp_path / name / f"{name}_{i:04d}.jpg").write_bytes(b"x")
    direction = {"Ann": [1, 0, 0, 0], "Bob": [1, 0, 0, 0], "Cy": [0, 1, 0, 0], "Di": [0, 0, 1, 0], "Eve": [0, 0, 0, 1]}
    embedded: list[str] = []

    def embed(path):  # type: ignore[no-untyped-def]
        embedded.append(path.parent.name)
        return np.array(direction[path.parent.name], np.float32)

    held = run_clustering(tmp_path, embed, threshold=0.5)
    assert sorted(set(embedded)) == ["Bob", "Di", "Eve"] and held["images"] == 6
    assert held["people_scored"] == "held-out" and "fitted on the other half" in held["people_note"]
    assert held["pairwise_f"] == 1.0 and held["clusters"] == 3
    everyone = run_clustering(tmp_path, embed, threshold=0.5, people="all")
    assert everyone["images"] == 10 and everyone["pairwise_precision"] < 1.0
    assert "not a held-out figure" in everyone["people_note"]
    tuning = run_clustering(tmp_path, embed, threshold=0.5, people="tuning")
    assert tuning["images"] == 4 and tuning["people_scored"] == "tuning"
    with pytest.raises(ConfigError, match="people must be one of held-out, tuning, all, not 'most'"):
        run_clustering(tmp_path, embed, threshold=0.5, people="most")  # type: ignore[arg-type]
