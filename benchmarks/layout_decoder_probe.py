"""Can a small cross-attention model read the layout of a Shapes caption from a text-encoder layer's word features?

The image families read captions through cross-attention from image positions to word features. This isolates that
reading from drawing: a two-block decoder whose nine queries are the 3x3 grid cells cross-attends over a caption's
word features (padding masked) and predicts, per cell, which colour sits there (or none). Trained on train-split
captions, scored on test-split scenes:

- `position`: one-object captions whose object's colour is most likely in the right cell;
- `relation`: two-object captions (objects of different colours) whose two most likely cells, one per colour, stand
  in the caption's relation (left of / right of / above / below, named as the dataset names it).

Same decoder, seed and budget for every layer given, so a gap between layers is what the features carry, not the
decoder. The generators' `acc_relation` is ~0.57 on the last layer's features (docs/RESULTS.md).

    python benchmarks/layout_decoder_probe.py --layers -1 3 0 --json runs/eval/layout_decoder_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import write_json  # noqa: E402


def scenes(cfg, split: str, n: int, per_scene: int):
    """(captions, scene per caption) for the first n scenes of a split."""
    import t2i.data.shapes as S

    caps, owners = [], []
    for i in range(n):
        scene, rng = S.make_scene(cfg, split, i)
        for c in S.caption_scene(scene, rng, per_scene):
            caps.append(c)
            owners.append(scene)
    return caps, owners


def targets(owners, colors):
    """(N, 9) class per cell: 0 = empty, 1 + colour index (two objects of one colour share the class)."""
    import torch

    import t2i.data.shapes as S

    y = torch.zeros(len(owners), 9, dtype=torch.long)
    for i, sc in enumerate(owners):
        for o in sc.objects:
            y[i, S.POSITIONS.index(o.position)] = 1 + colors.index(o.color)
    return y


def build_decoder(d_in: int, classes: int, d: int = 128, heads: int = 4, blocks: int = 2):
    """Nine learned cell queries; `blocks` x (cross-attention over words, self-attention over cells, MLP) -> (B, 9,
    classes) logits. (Classes defined here so `--help` does not import torch.)"""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2, self.n3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
            self.cross = nn.MultiheadAttention(d, heads, batch_first=True)
            self.self_attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x, kv, pad):
            h = self.n1(x)
            x = x + self.cross(h, kv, kv, key_padding_mask=pad, need_weights=False)[0]
            h = self.n2(x)
            x = x + self.self_attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.n3(x))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.queries = nn.Parameter(torch.randn(9, d) * 0.02)
            self.kv = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d))
            self.blocks = nn.ModuleList(Block() for _ in range(blocks))
            self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, classes))

        def forward(self, words, mask):
            kv = self.kv(words)
            x = self.queries.expand(words.shape[0], -1, -1)
            for b in self.blocks:
                x = b(x, kv, ~mask)
            return self.out(x)  # (B, 9, classes)

    return Decoder()


def scores(logits, owners, colors) -> dict:
    """position accuracy on one-object captions, relation accuracy on two-object ones with distinct colours."""
    import t2i.data.shapes as S

    prob = logits.softmax(-1)
    pos, rel = [], []
    for i, sc in enumerate(owners):
        cells = [int(prob[i, :, 1 + colors.index(o.color)].argmax()) for o in sc.objects]
        if len(sc.objects) == 1:
            pos.append(cells[0] == S.POSITIONS.index(sc.objects[0].position))
        elif sc.objects[0].color != sc.objects[1].color:
            a, b = (S.ShapeObject(o.shape, o.color, o.size, S.POSITIONS[c]) for o, c in zip(sc.objects, cells))
            rel.append(cells[0] != cells[1] and S.relation_of(a, b) == sc.relation)  # one cell: no relation drawn
    return {"position": round(sum(pos) / max(len(pos), 1), 4), "relation": round(sum(rel) / max(len(rel), 1), 4),
            "n_position": len(pos), "n_relation": len(rel)}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, nargs="+", default=[-1, 3], help="text-encoder hidden states to compare")
    p.add_argument("--train-scenes", type=int, default=10000, help="train-split scenes (5 captions each)")
    p.add_argument("--test-scenes", type=int, default=1500, help="test-split scenes (2 captions each)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    import t2i.data.shapes as S
    from t2i.text import TextEncoder, default_cache_dir

    t0 = time.time()
    cfg = S.ShapesConfig(seed=0)
    colors = list(S.COLORS)
    tr_caps, tr_owners = scenes(cfg, "train", args.train_scenes, 5)
    te_caps, te_owners = scenes(cfg, "test", args.test_scenes, 2)
    ytr = targets(tr_owners, colors)
    res = {"train_captions": len(tr_caps), "test_captions": len(te_caps), "epochs": args.epochs, "layers": {}}
    for layer in args.layers:
        t1 = time.time()
        enc = TextEncoder(max_length=32, cache_dir=default_cache_dir(), layer=layer)
        ftr = enc.encode(tr_caps)
        fte = enc.encode(te_caps, cache=False)
        torch.manual_seed(args.seed)
        model = build_decoder(enc.dim, 1 + len(colors))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        n, bs = len(tr_caps), 128
        steps = args.epochs * (n // bs)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
        g = torch.Generator().manual_seed(args.seed)
        model.train()
        for _ in range(args.epochs):
            perm = torch.randperm(n, generator=g)
            for k in range(n // bs):
                idx = perm[k * bs : (k + 1) * bs]
                logits = model(ftr.words[idx], ftr.mask[idx])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ytr[idx].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        with torch.no_grad():
            chunks = range(0, len(te_caps), 512)
            logits = torch.cat([model(fte.words[i : i + 512], fte.mask[i : i + 512]) for i in chunks])
        name = "last" if enc.layer == -1 else ("embeddings" if enc.layer == 0 else f"block{enc.layer}")
        res["layers"][name] = {**scores(logits, te_owners, colors), "final_train_loss": round(loss.item(), 4),
                               "seconds": round(time.time() - t1, 1)}  # fmt: skip
        print(name, json.dumps(res["layers"][name]), flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=1))
    if args.json:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
