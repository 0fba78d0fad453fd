"""Metrics against references: AUROC and F1 against scikit-learn, PRO and AUPRO on hand-made cases
and against a brute-force loop over every threshold."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_curve, roc_auc_score

from intra.evaluation.metrics import (
    aupro,
    auroc,
    evaluation_metrics,
    f1_at,
    f1_max,
    localisation,
    pro_curve,
    rates_at,
)


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


def _brute_force_pro(maps, masks):
    """(fpr, pro) at (0, 0) and at every distinct map value, threshold by threshold."""
    regions = []  # one boolean mask (n, H, W) per 8-connected defect region
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        for label in range(1, count + 1):
            region = np.zeros(masks.shape, dtype=bool)
            region[i] = labelled == label
            regions.append(region)
    fpr, pro = [0.0], [0.0]
    for threshold in sorted(set(maps.ravel().tolist()), reverse=True):
        predicted = maps >= threshold
        fpr.append(np.sum(predicted & ~masks) / np.sum(~masks))
        pro.append(np.mean([np.sum(predicted & region) / np.sum(region) for region in regions]))
    return np.array(fpr), np.array(pro)


def _brute_force_aupro(maps, masks, limit=0.3):
    fpr, pro = _brute_force_pro(maps, masks)
    area = 0.0
    for x0, x1, y0, y1 in zip(fpr[:-1], fpr[1:], pro[:-1], pro[1:]):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < limit:  # the segment crossing the limit, cut there
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
    return area / limit


def _random_defects(rng, n=4, size=12):
    """Masks (n, size, size) with several regions, one touching another only at a corner (one
    8-connected region), one image without defects; maps that rank defects higher, with ties."""
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(1, n):
        for _ in range(rng.integers(1, 4)):
            top, left = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 4, 2)
            masks[i, top : top + h, left : left + w] = True
    masks[1, 0, 0] = masks[1, 1, 1] = True  # diagonal neighbours
    maps = np.round(rng.random(masks.shape) + 0.6 * masks, 1)  # one decimal: many ties
    return maps.astype(np.float32), masks


@pytest.mark.parametrize("seed", range(6))
def test_pro_curve_and_aupro_equal_a_brute_force_loop(seed):
    rng = np.random.default_rng(seed)
    maps, masks = _random_defects(rng)
    if seed % 2:  # without ties, every pixel is its own threshold
        maps = (maps + rng.random(maps.shape) * 1e-3).astype(np.float32)
    fpr, pro = _brute_force_pro(maps, masks)
    ours_fpr, ours_pro, thresholds = pro_curve(maps, masks)
    assert len(thresholds) == len(np.unique(maps)) + 1
    np.testing.assert_allclose(ours_fpr, fpr, atol=1e-12)
    np.testing.assert_allclose(ours_pro, pro, atol=1e-9)
    for limit in (0.3, 0.05, 1.0):
        assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(_brute_force_aupro(maps, masks, limit), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_equals_scikit_learn_precision_recall_curve(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(labels * 0.8, 1.0)
    if seed % 2:
        scores = np.round(scores, 1)  # ties
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    best, threshold = f1_max(scores, labels)
    assert best == pytest.approx(f1.max(), abs=1e-12)
    assert f1_at(scores, labels, threshold) == pytest.approx(best, abs=1e-12)  # the threshold reaches it
    assert threshold in set(thresholds[f1[:-1] == f1.max()])


@pytest.mark.parametrize("seed", range(3))
def test_f1_at_and_rates_at_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)
    for threshold in (scores.min() - 1, -0.5, 0.0, 0.3, float(np.median(scores)), 1.2, scores.max(), 99.0):
        predicted = scores >= threshold
        assert f1_at(scores, labels, threshold) == pytest.approx(
            f1_score(labels, predicted, zero_division=0), abs=1e-12
        )
        tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
        tpr, fpr = rates_at(scores, labels, threshold)
        assert (tpr, fpr) == (pytest.approx(tp / (tp + fn), abs=1e-12), pytest.approx(fp / (fp + tn), abs=1e-12))
    assert rates_at(np.array([0.1, 0.9]), np.array([0, 0]), 0.5) == (0.0, 0.5)  # no defective: no true positives


def test_localisation_counts_peaks_on_the_defect_and_verdicts_without_a_region():
    mask = np.zeros((32, 32), bool)
    mask[10:13, 20:23] = True  # defect pixels: rows 10-12, columns 20-22; tolerance 32 / 32 = 1 px
    good = np.zeros((32, 32), bool)
    on, beside, away = np.zeros((32, 32)), np.zeros((32, 32)), np.zeros((32, 32))
    on[11, 21], beside[13, 23], away[0, 0] = 5.0, 5.0, 5.0  # beside: one pixel off diagonally
    peaks = np.array([[21.5 / 32, 11.5 / 32], [0.5 / 32, 0.5 / 32], [23.5 / 32, 13.5 / 32], [0.5, 0.5]])
    maps, masks = [on, on, beside, away], [mask, mask, mask, good]
    scores = np.array([3.0, 3.0, 0.5, 3.0])
    found = localisation(peaks, maps, masks, scores, {"image_threshold": 1.0, "pixel_threshold": 4.0})
    assert found["defective_images"] == 3
    assert found["score_peak_on_defect"] == pytest.approx(2 / 3)  # the second image's peak is away
    assert found["map_max_on_defect"] == 1.0  # "beside" is within the tolerance
    assert found["flagged"] == 3 and found["flagged_without_region"] == 0
    maps[3] = np.ones((32, 32))  # the flagged good image's map stays below the pixel threshold
    assert (
        localisation(peaks, maps, masks, scores, {"image_threshold": 1.0, "pixel_threshold": 4.0})[
            "flagged_without_region"
        ]
        == 1
    )
    assert "flagged" not in localisation(peaks, maps, masks, scores, {})
    # Two pixels off is beyond the tolerance of a 32 px mask.
    far = localisation(np.array([[24.5 / 32, 14.5 / 32]]), [beside], [mask], scores[:1], {})
    assert far["score_peak_on_defect"] == 0.0
