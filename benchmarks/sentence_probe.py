"""Is an attribute in the sentence feature the GANs condition on? Linear probes and near-miss distances on Shapes.

StackGAN's generator and AttnGAN's first stage see a caption only through the text encoder's sentence vector
(mean-pooled, L2-normalised all-MiniLM-L6-v2, standardised per vector by `sentence_norm`). This fits a multinomial
logistic regression per attribute (shape, colour, size, position) on one-object captions of Shapes train scenes and
scores it on test scenes, then compares distances: caption vs a paraphrase of the same scene, vs a near miss (one
attribute changed, t2i.data.shapes.near_miss), vs a random other caption. High probe accuracy with paraphrases as far
apart as near misses means the information is there but in a few directions among much wording variance.

    python benchmarks/sentence_probe.py --json runs/eval/sentence_probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ATTRS = ("shape", "color", "size", "position")


def fit(x, y, classes: int):
    """Multinomial logistic regression (L-BFGS, small L2) -> (weights, bias)."""
    import torch

    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 1e-4 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def probe(xtr, ytr_raw, xte, yte_raw) -> float:
    """Standardise on the train features, fit, -> test accuracy (labels are any sortable values)."""
    import torch

    labels = sorted(set(ytr_raw))
    ytr = torch.tensor([labels.index(v) for v in ytr_raw])
    yte = torch.tensor([labels.index(v) for v in yte_raw])
    m, s = xtr.mean(0), xtr.std(0) + 1e-6
    w, b = fit((xtr - m) / s, ytr, len(labels))
    return round((((xte - m) / s @ w + b).argmax(1) == yte).float().mean().item(), 4)


def one_object_captions(cfg, split: str, n: int, per_scene: int = 5):
    """Captions of the one-object scenes among the first n of a split, with their attribute labels."""
    import t2i.data.shapes as S

    caps, ys = [], {k: [] for k in ATTRS}
    for i in range(n):
        scene, rng = S.make_scene(cfg, split, i)
        if len(scene.objects) == 1:
            for c in S.caption_scene(scene, rng, per_scene):
                caps.append(c)
                for k in ATTRS:
                    ys[k].append(getattr(scene.objects[0], k))
    return caps, ys


def encode_sentences(enc, caps, cache: bool = True):
    """(N, D) sentence features of caps, encoded in chunks of 2,048."""
    import torch

    return torch.cat([enc.encode(caps[i : i + 2048], cache=cache).sentence for i in range(0, len(caps), 2048)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-scenes", type=int, default=10000)
    ap.add_argument("--test-scenes", type=int, default=1500)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    import t2i.data.shapes as S
    from t2i.text import TextEncoder, default_cache_dir

    torch.set_num_threads(1)
    enc = TextEncoder(cache_dir=default_cache_dir())
    cfg = S.ShapesConfig()

    def sentences(caps, cache=True):
        return encode_sentences(enc, caps, cache)

    tr_c, tr_y = one_object_captions(cfg, "train", args.train_scenes)
    te_c, te_y = one_object_captions(cfg, "test", args.test_scenes)
    xtr, xte = sentences(tr_c), sentences(te_c)
    out = {"train_captions": len(tr_c), "test_captions": len(te_c), "probe_test_accuracy": {}, "chance": {}}
    for k in ATTRS:
        out["probe_test_accuracy"][k] = probe(xtr, tr_y[k], xte, te_y[k])
        out["chance"][k] = round(Counter(te_y[k]).most_common(1)[0][1] / len(te_y[k]), 4)

    # Distances after the per-vector standardisation D and the CA read (layer_norm), over 600 train scenes.
    rng = np.random.default_rng(0)
    base, para, miss = [], [], []
    for i in range(600):
        scene, r = S.make_scene(cfg, "train", i)
        a, p = S.caption_scene(scene, r, 2)
        base.append(a)
        para.append(p)
        miss.append(S.caption_scene(S.near_miss(scene, rng), rng, 1)[0])
    ln = lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:])  # noqa: E731
    a, p, m = ln(sentences(base)), ln(sentences(para)), ln(sentences(miss, cache=False))
    other = a[torch.randperm(len(a), generator=torch.Generator().manual_seed(0))]
    med = lambda x, y: round(float((x - y).norm(dim=1).median()), 2)  # noqa: E731
    out["median_distance"] = {"paraphrase": med(a, p), "near_miss": med(a, m), "random_caption": med(a, other),
                              "norm": round(float(a.norm(dim=1).mean()), 2)}  # fmt: skip
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
