"""The official ISIC 2018 Task 2 score on hand-built cases."""
import pytest
import torch

from skinseg.metrics import OfficialScore, ThresholdSweep, official_score


def _masks(c, h, w, boxes):
    """c x h x w bool masks; boxes: {channel: (r0, r1, c0, c1)}."""
    m = torch.zeros(c, h, w, dtype=torch.bool)
    for ch, (r0, r1, c0, c1) in boxes.items():
        m[ch, r0:r1, c0:c1] = True
    return m


def test_single_image_jaccard_and_dice_by_hand():
    truth = _masks(5, 10, 10, {0: (0, 4, 0, 5)})  # 20 px
    pred = _masks(5, 10, 10, {0: (0, 4, 2, 7)})  # 20 px, 12 overlap
    s = official_score([pred], [truth])
    # TP 12, FP 8, FN 8 (normalized by 100 px, which cancels within one image)
    assert s.jaccard["pigment_network"] == pytest.approx(12 / 28)
    assert s.dice["pigment_network"] == pytest.approx(24 / 40)
    # attributes empty in both truth and prediction score 1
    assert s.jaccard["streaks"] == 1.0 and s.dice["globules"] == 1.0
    assert s.overall == pytest.approx(12 / 28)  # micro: the empty attributes add nothing to the sums
    assert s.macro_jaccard == pytest.approx((12 / 28 + 4) / 5)


def test_images_of_different_sizes_weigh_the_same():
    # image A: 10x10, TP 10 px, FP 10 px -> normalized TP .1, FP .1
    a_t = _masks(1, 10, 10, {0: (0, 1, 0, 10)})
    a_p = _masks(1, 10, 10, {0: (0, 2, 0, 10)})
    # image B: 100x100, TP 0, FN 1000 px -> normalized FN .1
    b_t = _masks(1, 100, 100, {0: (0, 10, 0, 100)})
    b_p = torch.zeros(1, 100, 100, dtype=torch.bool)
    s = official_score([a_p, b_p], [a_t, b_t])
    assert s.overall == pytest.approx(0.1 / (0.1 + 0.1 + 0.1))
    # unnormalized pixel counts would give 10 / (10 + 10 + 1000): the official score is not that
    assert s.overall != pytest.approx(10 / 1020)


def test_micro_average_differs_from_macro():
    t = _masks(2, 10, 10, {0: (0, 10, 0, 10), 1: (0, 1, 0, 1)})
    p = _masks(2, 10, 10, {0: (0, 10, 0, 10)})
    acc = OfficialScore(classes=2, attributes=("a", "b"))
    acc.update(p[None], t[None])
    s = acc.compute()
    assert s.jaccard == {"a": 1.0, "b": 0.0}
    assert s.overall == pytest.approx(100 / 101) and s.macro_jaccard == pytest.approx(0.5)
    out = s.to_official_json()
    assert out["overall"] == s.overall and out["micro_average"]["jaccard"] == s.overall and "a" in out


def test_empty_everything_scores_one_and_empty_prediction_scores_zero():
    empty = torch.zeros(5, 8, 8, dtype=torch.bool)
    assert official_score([empty], [empty]).overall == 1.0
    truth = _masks(5, 8, 8, {1: (0, 2, 0, 2)})
    assert official_score([empty], [truth]).overall == 0.0


def test_streaming_equals_one_shot_and_counts_images():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(6, 5, 16, 16, generator=g) > 0.7
    p = torch.rand(6, 5, 16, 16, generator=g) > 0.6
    acc = OfficialScore()
    acc.update(p[:2], t[:2])
    acc.update(p[2:], t[2:])
    one = OfficialScore()
    one.update(p, t)
    assert acc.images == 6 and acc.compute().overall == pytest.approx(one.compute().overall)
    torch.testing.assert_close(acc.counts[:3].sum(0) + acc.counts[3], torch.full((5,), 6.0, dtype=torch.float64))


def test_threshold_sweep_matches_the_official_score_and_tunes_upward():
    g = torch.Generator().manual_seed(1)
    t = torch.rand(4, 5, 16, 16, generator=g) > 0.8
    noise = torch.rand(4, 5, 16, 16, generator=g)
    probs = torch.where(t, 0.72 + 0.28 * noise, 0.68 * noise)  # separable at about 0.7, not at 0.5
    sweep = ThresholdSweep()
    sweep.update(probs, t)
    for thr in ([0.5] * 5, [0.3, 0.4, 0.5, 0.6, 0.7]):
        acc = OfficialScore()
        acc.update(probs >= torch.tensor(thr).view(1, -1, 1, 1), t)
        assert sweep.scores(thr).overall == pytest.approx(acc.compute().overall, abs=1e-9)
    thr, gates, best = sweep.tune()
    assert best >= sweep.scores([0.5] * 5).overall and best == pytest.approx(sweep.scores(thr).overall)
    assert best == pytest.approx(1.0) and sweep.scores([0.5] * 5).overall < 0.9
    assert all(0.68 <= v <= 0.73 for v in thr)


def test_presence_gating_removes_false_positives_of_absent_attributes():
    t = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    t[0, 0, :4] = True
    probs = torch.full((2, 1, 8, 8), 0.9)  # predicts everything everywhere
    presence = torch.tensor([[0.9], [0.1]])  # image 1 has no attribute: a good presence head says so
    sweep = ThresholdSweep(classes=1, gate_cutoffs=(0.0, 0.5))
    sweep.update(probs, t, presence)
    ungated = sweep.scores([0.5], gate=0).overall
    gated = sweep.scores([0.5], gate=1).overall
    assert ungated == pytest.approx(0.5 / (0.5 + 0.5 + 1.0)) and gated == pytest.approx(0.5 / 1.0)
    thr, cut, best = sweep.tune(tune_gate=True)
    assert cut == [0.5] and best == pytest.approx(gated)
