"""Metrics for both tasks, one registry used by training and by `textgan eval` / `textgan sweep`.

BLEU protocol (docs/RESULTS.md): sentence-level BLEU-n of each hypothesis against the whole reference set, uniform
weights over 1..n, nltk's SmoothingFunction().method1 (epsilon 0.1 for zero n-gram matches), closest-reference-length
brevity penalty, averaged over hypotheses -- the quantity Texygen computes with nltk, computed here with numpy over
hashed n-grams.  Self-BLEU is leave-one-out: each generated sentence against all the *other* generated sentences.
"""

from __future__ import annotations

import math

import numpy as np
import torch

EPS = 0.1  # nltk SmoothingFunction().method1 epsilon
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _ids(sents: list[list[str]], vocab: dict[str, int]) -> list[np.ndarray]:
    return [np.array([vocab.setdefault(w, len(vocab) + 1) for w in s], dtype=np.uint64) for s in sents]


def _ngrams(ids: list[np.ndarray], n: int):
    """All n-grams of all sentences hashed to uint64 -> (hashes, sentence index), both (M,)."""
    lens = np.array([len(s) for s in ids])
    flat = np.concatenate(ids) if ids else np.zeros(0, np.uint64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    counts = np.maximum(lens - n + 1, 0)
    sent = np.repeat(np.arange(len(ids)), counts)
    pos = np.repeat(starts, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    h = np.full(len(pos), np.uint64(n), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(n):
            h = (h * _MIX) ^ flat[pos + i]
            h ^= h >> np.uint64(29)
    return h, sent


def _count(h: np.ndarray, sent: np.ndarray):
    """Unique (sentence, n-gram) pairs with their counts -> (hash, sentence, count)."""
    order = np.lexsort((h, sent))
    h, sent = h[order], sent[order]
    if len(h) == 0:
        return h, sent, np.zeros(0, np.int64)
    new = np.ones(len(h), bool)
    new[1:] = (h[1:] != h[:-1]) | (sent[1:] != sent[:-1])
    idx = np.flatnonzero(new)
    return h[idx], sent[idx], np.diff(np.append(idx, len(h)))


def _top2(h: np.ndarray, c: np.ndarray):
    """Per distinct n-gram: the largest and second-largest count over sentences -> (keys, top1, top2)."""
    order = np.lexsort((-c, h))
    h, c = h[order], c[order]
    first = np.ones(len(h), bool)
    first[1:] = h[1:] != h[:-1]
    idx = np.flatnonzero(first)
    top1 = c[idx]
    nxt = idx + 1
    has2 = (nxt < len(h)) & ~np.append(first, True)[np.minimum(nxt, len(h))]
    top2 = np.where(has2, c[np.minimum(nxt, len(h) - 1)], 0)
    return h[idx], top1, top2


def _lookup(keys, values, q):
    i = np.searchsorted(keys, q)
    i = np.minimum(i, max(len(keys) - 1, 0))
    found = (keys[i] == q) if len(keys) else np.zeros(len(q), bool)
    return np.where(found, values[i] if len(keys) else 0, 0), i, found


def _closest_len(hyp_len: np.ndarray, ref_lens: np.ndarray) -> np.ndarray:
    """nltk's closest reference length (ties go to the shorter one) for each hypothesis length."""
    u = np.unique(ref_lens)
    i = np.clip(np.searchsorted(u, hyp_len), 1, len(u) - 1) if len(u) > 1 else np.zeros(len(hyp_len), int)
    if len(u) == 1:
        return np.full(len(hyp_len), u[0])
    lo, hi = u[i - 1], u[i]
    best = np.where(np.abs(hi - hyp_len) < np.abs(lo - hyp_len), hi, lo)
    return np.where(hyp_len <= u[0], u[0], np.where(hyp_len >= u[-1], u[-1], best))


def _bleu_from_counts(num: np.ndarray, den: np.ndarray, hyp_len: np.ndarray, ref_len: np.ndarray, n: int):
    """num/den (n, H) clipped matches and totals per order -> per-hypothesis BLEU-n (H,), nltk method1."""
    p = np.where(num[:n] == 0, EPS / np.maximum(den[:n], 1), num[:n] / np.maximum(den[:n], 1))
    s = np.log(p).mean(0)
    bp = np.where(hyp_len > ref_len, 1.0, np.exp(1 - ref_len / np.maximum(hyp_len, 1)))
    out = bp * np.exp(s)
    return np.where((num[0] == 0) | (hyp_len == 0), 0.0, out)


def bleu(hyps: list[list[str]], refs: list[list[str]], max_n: int = 5) -> dict[int, float]:
    """Mean sentence BLEU-2..max_n of tokenised hypotheses against the full reference set."""
    vocab: dict[str, int] = {}
    hid, rid = _ids(hyps, vocab), _ids(refs, vocab)
    H = len(hid)
    num, den = np.zeros((max_n, H)), np.zeros((max_n, H))
    for n in range(1, max_n + 1):
        rk, rmax, _ = _top2(*_count(*_ngrams(rid, n))[::2])
        hh, hs, hc = _count(*_ngrams(hid, n))
        m, _, _ = _lookup(rk, rmax, hh)
        num[n - 1] = np.bincount(hs, np.minimum(hc, m), minlength=H)
        den[n - 1] = np.bincount(hs, hc, minlength=H)
    hl = np.array([len(s) for s in hid])
    rl = _closest_len(hl, np.array([len(s) for s in rid]))
    return {n: float(_bleu_from_counts(num, den, hl, rl, n).mean()) for n in range(2, max_n + 1)}


def self_bleu(sents: list[list[str]], max_n: int = 5) -> dict[int, float]:
    """Leave-one-out Self-BLEU-2..max_n: each sentence against all the others (top-2 counts make it O(1) each)."""
    ids = _ids(sents, {})
    H = len(ids)
    num, den = np.zeros((max_n, H)), np.zeros((max_n, H))
    for n in range(1, max_n + 1):
        hh, hs, hc = _count(*_ngrams(ids, n))
        keys, top1, top2 = _top2(hh, hc)
        t1, _, _ = _lookup(keys, top1, hh)
        t2, _, _ = _lookup(keys, top2, hh)
        m = np.where(hc == t1, t2, t1)  # max count over the other sentences
        num[n - 1] = np.bincount(hs, np.minimum(hc, m), minlength=H)
        den[n - 1] = np.bincount(hs, hc, minlength=H)
    hl = np.array([len(s) for s in ids])
    # closest other length: if this length occurs only once, it is not available as a reference length
    lens, cnt = np.unique(hl, return_counts=True)
    rl = hl.copy()
    for L in lens[cnt == 1]:
        i = np.flatnonzero(hl == L)
        others = hl[hl != L]
        rl[i] = _closest_len(np.array([L]), others)[0] if len(others) else L
    return {n: float(_bleu_from_counts(num, den, hl, rl, n).mean()) for n in range(2, max_n + 1)}


# --- model metrics ------------------------------------------------------------------------------------------------
@torch.no_grad()
def generator_nll(gen, data: torch.Tensor, temperature: float = 1.0, batch_size: int = 1000) -> float:
    """Mean per-token NLL (nats) of held-out sequences (N, T) under the (tempered) generator."""
    tot = cnt = 0.0
    for x in data.split(batch_size):
        m = gen.token_mask(x)
        safe = x if gen.config.pad_id is None else x.masked_fill(m == 0, gen.config.eos_id)  # <pad> logit is -inf
        logp = torch.log_softmax(gen(x) / temperature, -1).gather(2, safe.unsqueeze(2)).squeeze(2)
        tot -= float((logp * m).sum())
        cnt += float(m.sum())
    return tot / cnt


def oracle_metrics(gen, oracle, test: torch.Tensor, n: int = 10000, temperature: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    samples = gen.sample(n, temperature=temperature, generator=g)
    return {
        "nll_oracle": float(oracle.nll(samples).mean()),
        "nll_test": generator_nll(gen, test[:n], temperature),
        "num_samples": n,
        "temperature": temperature,
    }


def text_metrics(gen, tok, test_ids, test_refs, n=10000, temperature=1.0, seed=0, self_bleu_n: int | None = None):
    from textgan.data import decode_batch, words

    g = torch.Generator().manual_seed(seed)
    hyps = [words(s) for s in decode_batch(tok, gen.sample(n, temperature=temperature, generator=g))]
    res = {f"bleu{k}": v for k, v in bleu(hyps, test_refs).items()}
    res.update({f"self_bleu{k}": v for k, v in self_bleu(hyps[: self_bleu_n or n]).items()})
    res["nll_test"] = generator_nll(gen, test_ids, temperature)
    res["mean_len"] = float(np.mean([len(h) for h in hyps]))
    res.update(num_samples=n, num_self_bleu=len(hyps[: self_bleu_n or n]), temperature=temperature)
    return res


METRICS = {"oracle": oracle_metrics, "text": text_metrics}


def finite(x: float) -> bool:
    return x is not None and math.isfinite(x)
