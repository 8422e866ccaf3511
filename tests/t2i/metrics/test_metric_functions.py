"""Metrics on tiny fixtures where the answer is known."""

import numpy as np
import pytest
import torch

from t2i.data.shapes import COLORS, POSITIONS, SHAPES, SIZES
from t2i.metrics.attributes import relation_holds, score_image, summarize
from t2i.metrics.core import MetricError, frechet_distance, kernel_distance, rank_hits, sample_mismatches


def test_fid_identical_sets_is_zero_and_shifted_sets_are_not():
    g = torch.Generator().manual_seed(0)
    # A tiny random feature net over random images: FID of a set with itself ~ 0, of a different set > 0.
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 8))
    a = torch.rand(300, 3, 8, 8, generator=g)
    b = torch.rand(300, 3, 8, 8, generator=g).mul(0.5)  # darker images: a different distribution
    with torch.no_grad():
        fa, fb = net(a), net(b)
    assert abs(frechet_distance(fa, fa)) < 1e-4
    d = frechet_distance(fa, fb)
    assert d > 100 * max(abs(frechet_distance(fa, fa)), 1e-6) and d > 0.01
    # Two independent draws of the same distribution are much closer than two different distributions.
    fa2 = net(torch.rand(300, 3, 8, 8, generator=g)).detach()
    assert frechet_distance(fa, fa2) < d / 3


def test_kid_known_answers_and_subset_error():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g) + 1.0
    a2 = torch.randn(200, 8, generator=g)  # a second draw of a's distribution
    same, _ = kernel_distance(a, a2, subset_size=100, subsets=20)
    diff, _ = kernel_distance(a, b, subset_size=100, subsets=20)
    assert diff > 1.0 and abs(same) < diff / 50
    with pytest.raises(MetricError, match="subset_size=100"):
        kernel_distance(a[:60], b[:60], subset_size=100)


def _onehot_scores(n, e, noise, g):
    keys = torch.randint(0, 60, (n,), generator=g)
    protos = torch.nn.functional.normalize(torch.randn(60, e, generator=g), dim=-1)
    img = torch.nn.functional.normalize(protos[keys] + noise * torch.randn(n, e, generator=g), dim=-1)
    return keys, protos, img


def test_r_precision_true_captions_high_shuffled_at_chance():
    g = torch.Generator().manual_seed(0)
    n, e = 1000, 32
    keys, protos, img = _onehot_scores(n, e, 0.05, g)
    rng = np.random.default_rng(0)
    neg = sample_mismatches(keys.tolist(), keys.tolist(), 99, rng)  # mismatches: captions of other keys
    assert all(keys[i] not in keys[torch.from_numpy(neg[i])] for i in range(20))
    neg_txt = protos[keys[torch.from_numpy(neg)]]  # (N, 99, E)
    true = rank_hits(img, protos[keys], neg_txt).mean()
    shuffled = rank_hits(img, protos[keys[torch.randperm(n, generator=g)]], neg_txt).mean()
    assert true > 0.95
    assert shuffled < 0.05  # chance is 1/100 (ties with a same-key shuffle count as misses)
    with pytest.raises(MetricError, match="mismatched captions"):
        sample_mismatches([0, 1], [0, 1, 1], 99, rng)


def _perfect(attrs):
    occ, sh, co, si = np.zeros(9), np.zeros(9, int), np.zeros(9, int), np.zeros(9, int)
    for o in attrs["objects"]:
        c = POSITIONS.index(o["position"])
        occ[c], sh[c], co[c], si[c] = (
            0.99,
            SHAPES.index(o["shape"]),
            list(COLORS).index(o["color"]),
            SIZES.index(o["size"]),
        )
    return occ, sh, co, si


ONE = {"objects": [{"shape": "star", "color": "red", "size": "small", "position": "top left"}], "relation": None}
TWO = {
    "objects": [
        {"shape": "circle", "color": "blue", "size": "large", "position": "left"},
        {"shape": "cross", "color": "green", "size": "small", "position": "bottom right"},
    ],
    "relation": "left of",
}


def test_attribute_scoring_known_answers():
    assert score_image(*_perfect(ONE), ONE)["correct"]
    assert score_image(*_perfect(TWO), TWO)["correct"]
    occ, sh, co, si = _perfect(ONE)
    co[0] = list(COLORS).index("blue")  # wrong colour
    v = score_image(occ, sh, co, si, ONE)
    assert not v["correct"] and v["color"] == [False] and v["shape"] == [True] and v["position"]
    occ, sh, co, si = _perfect(ONE)
    occ[0], occ[8], sh[8], co[8], si[8] = 0, 0.9, sh[0], co[0], si[0]  # right object, wrong cell
    v = score_image(occ, sh, co, si, ONE)
    assert not v["correct"] and not v["position"] and v["color"] == [True]
    occ, sh, co, si = _perfect(ONE)
    occ[4] = 0.8  # an extra object
    assert not score_image(occ, sh, co, si, ONE)["correct"]
    # Two objects: swap which cell holds which -> the relation no longer holds.
    occ, sh, co, si = _perfect(TWO)
    a, b = POSITIONS.index("left"), POSITIONS.index("bottom right")
    sh[a], sh[b], co[a], co[b], si[a], si[b] = sh[b], sh[a], co[b], co[a], si[b], si[a]
    v = score_image(occ, sh, co, si, TWO)
    assert not v["correct"] and v["relation"] is False and all(v["color"])
    s = summarize([score_image(*_perfect(ONE), ONE), v])
    assert s["attribute_accuracy"] == 0.5 and s["acc_relation"] == 0.0 and s["acc_position"] == 1.0


def test_relation_reading():
    tl, br, top, bottom = 0, 8, 1, 7
    assert relation_holds("left of", tl, br) and relation_holds("above", tl, br)  # diagonal: both read true
    assert relation_holds("above", top, bottom) and not relation_holds("left of", top, bottom)
    assert relation_holds("right of", br, tl) and relation_holds("below", bottom, top)
