"""Metrics against references: AUROC against scikit-learn, PRO and AUPRO on hand-made cases, F1."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from intra.evaluation.metrics import aupro, auroc, evaluation_metrics, f1_max, pro_curve


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding makes many ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_extremes():
    labels = np.array([0, 0, 1, 1])
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert auroc(np.ones(4), labels) == 0.5


def test_pro_curve_on_a_hand_made_case():
    # One image, 1 x 6 pixels: one defect region of 2 pixels (columns 0-1), 4 background pixels.
    masks = np.array([[[1, 1, 0, 0, 0, 0]]], dtype=bool)
    maps = np.array([[[0.9, 0.5, 0.7, 0.4, 0.3, 0.2]]])
    fpr, pro, _ = pro_curve(maps, masks)
    # Thresholds 0.9, 0.7, 0.5, 0.4, 0.3, 0.2 -> (fpr, pro):
    np.testing.assert_allclose(fpr, [0, 0, 0.25, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0])


def test_aupro_on_a_hand_made_case():
    masks = np.array([[[1, 1, 0, 0, 0, 0]]], dtype=bool)
    maps = np.array([[[0.9, 0.5, 0.7, 0.4, 0.3, 0.2]]])
    # Area under PRO up to FPR 0.3: 0.25 * 0.5 (PRO 0.5 until FPR 0.25) + 0.05 * 1.0 = 0.175.
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.175 / 0.3)


def test_aupro_weights_regions_equally():
    # Two images: a large region found at once, a small region found only late.
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2, :] = True  # 8 pixels
    masks[1, 0, 0] = True  # 1 pixel
    maps = np.zeros((2, 4, 4))
    maps[0, :2, :] = 1.0
    fpr, pro, _ = pro_curve(maps, masks)
    assert pro[1] == pytest.approx(0.5)  # the large region alone is half of the PRO
    # The small region is found only with every background pixel (FPR 0 -> 1 in one step); the
    # curve is linear in between, so PRO at FPR 0.3 is 0.65 and the area is 0.3 * (0.5 + 0.65) / 2.
    assert aupro(maps, masks) == pytest.approx(0.3 * (0.5 + 0.65) / 2 / 0.3)


def test_perfect_segmentation_has_aupro_one():
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, 2:4, 2:4] = True
    masks[2, 5:, 5:] = True
    assert aupro(masks.astype(float), masks) == pytest.approx(1.0)


def test_f1_max():
    f1, threshold = f1_max(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert f1 == pytest.approx(0.8) and threshold == pytest.approx(0.35)


def test_evaluation_metrics_keys():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1])
    masks = np.zeros((4, 8, 8), dtype=bool)
    masks[2, :3, :3] = masks[3, 4:, 4:] = True
    maps = rng.random((4, 8, 8)) + masks
    result = evaluation_metrics(maps.max(axis=(1, 2)), labels, ["good", "good", "a", "b"], maps, masks)
    assert set(result) == {"image_auroc", "pixel_auroc", "aupro", "per_kind"}
    assert set(result["per_kind"]) == {"a", "b"}
