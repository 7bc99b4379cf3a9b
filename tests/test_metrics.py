import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from cmkd_pipe.pipeline.metrics import accuracy, average_precision, d_prime, roc_auc, summarize


def _data(seed: int, n: int = 60, c: int = 7, levels: int | None = 5):
    """Random scores (few distinct levels, so many ties) and multi-hot targets."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (n, c)) / levels if levels else rng.normal(size=(n, c))
    targets = (rng.random((n, c)) < 0.3).astype(np.uint8)
    targets[:, 0] = 0  # a class without positives
    targets[:, 1] = 1  # a class without negatives
    targets[0, 2], targets[1:, 2] = 1, 0  # a single positive
    return scores.astype(np.float32), targets


@pytest.mark.parametrize("seed,levels", [(0, 5), (1, 2), (2, None), (3, 50)])
def test_average_precision_matches_sklearn(seed, levels):
    scores, targets = _data(seed, levels=levels)
    ap = average_precision(scores, targets)
    assert math.isnan(ap[0])
    for k in range(1, scores.shape[1]):
        assert ap[k] == pytest.approx(average_precision_score(targets[:, k], scores[:, k]), abs=1e-12)


@pytest.mark.parametrize("seed,levels", [(0, 5), (1, 2), (2, None), (3, 50)])
def test_roc_auc_matches_sklearn(seed, levels):
    scores, targets = _data(seed, levels=levels)
    auc = roc_auc(scores, targets)
    assert math.isnan(auc[0]) and math.isnan(auc[1])
    for k in range(2, scores.shape[1]):
        assert auc[k] == pytest.approx(roc_auc_score(targets[:, k], scores[:, k]), abs=1e-12)


def test_all_tied_scores():
    targets = np.array([[1], [0], [1], [0]])
    scores = np.zeros((4, 1))
    assert average_precision(scores, targets)[0] == pytest.approx(0.5)
    assert roc_auc(scores, targets)[0] == pytest.approx(0.5)


def test_perfect_ranking():
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    np.testing.assert_allclose(average_precision(scores, targets), [1.0, 1.0])
    np.testing.assert_allclose(roc_auc(scores, targets), [1.0, 1.0])


def test_accuracy_argmax_vs_argmax():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(50, 6))
    labels = rng.integers(0, 6, 50)
    soft = np.eye(6)[labels] * 0.7 + np.eye(6)[rng.integers(0, 6, 50)] * 0.3  # mixup-style targets
    assert accuracy(scores, np.eye(6)[labels]) == pytest.approx(accuracy_score(labels, scores.argmax(1)))
    assert accuracy(scores, soft) == pytest.approx(accuracy_score(soft.argmax(1), scores.argmax(1)))


def test_d_prime():
    assert d_prime(0.5) == pytest.approx(0.0)
    assert d_prime(0.9) == pytest.approx(math.sqrt(2) * stats.norm.ppf(0.9))
    np.testing.assert_allclose(d_prime(np.array([0.5, 0.75])), [0.0, math.sqrt(2) * 0.6744897501960817])


def test_summarize_multilabel():
    scores, targets = _data(5)
    result = summarize(scores, targets, multilabel=True)
    json.dumps(result, allow_nan=False)
    defined = [k for k in range(targets.shape[1]) if targets[:, k].any()]
    expected_map = np.mean([average_precision_score(targets[:, k], scores[:, k]) for k in defined])
    both = [k for k in defined if not targets[:, k].all()]
    expected_mauc = np.mean([roc_auc_score(targets[:, k], scores[:, k]) for k in both])
    assert result["mAP"] == pytest.approx(expected_map)
    assert result["mAUC"] == pytest.approx(expected_mauc)
    assert result["d_prime"] == pytest.approx(math.sqrt(2) * stats.norm.ppf(expected_mauc))
    assert result["n_classes_without_positives"] == 1
    assert result["per_class_ap"][0] is None and len(result["per_class_ap"]) == targets.shape[1]
    assert result["accuracy"] == pytest.approx(accuracy(scores, targets))


def test_summarize_single_label_and_degenerate():
    scores, targets = np.eye(3), np.eye(3)
    assert summarize(scores, targets, multilabel=False) == {"accuracy": 1.0}
    perfect = summarize(scores, targets, multilabel=True)
    assert perfect["mAP"] == 1.0 and perfect["mAUC"] == 1.0 and perfect["d_prime"] is None  # d′ infinite
    result = summarize(scores, np.zeros((3, 3)), multilabel=True)
    assert result["mAP"] is None and result["mAUC"] is None and result["d_prime"] is None
    assert result["n_classes_without_positives"] == 3
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize(
    "scores,targets,message",
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "must both be"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "no clips"),
        (np.array([[np.nan, 0.0]]), np.zeros((1, 2)), "NaN"),
        (np.zeros((2, 2)), np.full((2, 2), 0.5), "0/1 targets"),
    ],
)
def test_bad_input(scores, targets, message):
    with pytest.raises(ValueError, match=message):
        average_precision(scores, targets)
