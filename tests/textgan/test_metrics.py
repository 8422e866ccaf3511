import random
import time

import numpy as np
import pytest

from textgan.metrics import bleu, self_bleu


def _random_corpus(n, vocab, lo=1, hi=12, seed=0):
    rng = random.Random(seed)
    return [[str(rng.randrange(vocab)) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1])
def test_bleu_and_self_bleu_match_nltk(seed):
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    sm = nltk_bleu.SmoothingFunction().method1
    refs = _random_corpus(40, 9, seed=seed)
    hyps = _random_corpus(25, 9, seed=seed + 10) + [["1"], ["2", "3"]]  # short ones hit the smoothing paths
    ours, ours_self = bleu(hyps, refs), self_bleu(hyps)
    for n in range(2, 6):
        w = tuple([1.0 / n] * n)
        want = np.mean([nltk_bleu.sentence_bleu(refs, h, w, smoothing_function=sm) for h in hyps])
        want_self = np.mean(
            [
                nltk_bleu.sentence_bleu(hyps[:i] + hyps[i + 1 :], h, w, smoothing_function=sm)
                for i, h in enumerate(hyps)
            ]
        )
        assert ours[n] == pytest.approx(want, abs=1e-9)
        assert ours_self[n] == pytest.approx(want_self, abs=1e-9)


def test_bleu_identical_and_disjoint():
    s = [["a", "b", "c", "d", "e", "f"]]
    assert bleu(s, s)[5] == pytest.approx(1.0)
    assert bleu([["x", "y", "z"]], s)[2] == 0.0
    dup = [["a", "b", "c", "d", "e"]] * 3
    assert self_bleu(dup)[5] == pytest.approx(1.0)  # each copy finds the others


def test_bleu_10k_by_10k_is_fast():
    refs = _random_corpus(10000, 3000, 8, 15, seed=2)
    hyps = _random_corpus(10000, 3000, 8, 15, seed=3)
    t0 = time.time()
    b = bleu(hyps, refs)
    s = self_bleu(hyps)
    assert time.time() - t0 < 10  # seconds, not minutes
    assert 0 < b[5] < b[2] < 1 and 0 < s[5] < s[2] < 1
