"""Does a two-object caption's word feature say where its object goes? A linear probe, layer by layer.

The generators draw each object from the word features of its own words (AttnGAN's and diffusion's cross-attention,
the VQGAN prior's cross-attention). To place the right object on the left, the feature of that object's words must
carry its role in the relation: "a red circle left of a blue star" puts red left, "a blue star, and a red circle
left of it" too. This fits a multinomial logistic probe from the feature of an object's colour word (a one-token
word, once per object) to that object's direction from the other one (left / right / above / below; chance ~0.25),
trained on Shapes train-split captions and scored on test-split scenes, for the embedding layer (no context: the
control) and every transformer layer of the text encoder. It is a linear read-out of one token: a low score says the
role is not in that word alone, not that a model attending over the whole caption cannot find it
(benchmarks/layout_decoder_probe.py asks that question). `--target shape` asks
the same words for their own object's shape instead (colour-shape binding: "a red circle and a blue star").

    python benchmarks/relation_probe.py --scenes 3000 --json runs/eval/relation_probe.json
    python benchmarks/relation_probe.py --scenes 3000 --target shape --json runs/eval/binding_probe.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sentence_probe import probe  # noqa: E402

from benchmarks import write_json  # noqa: E402


def examples(cfg, split: str, n: int, per_scene: int, target: str = "direction"):
    """(caption, char span of object k's colour word, label) for two-object scenes
    among the first n of a split whose objects differ in colour; the label is object k's direction from the other one
    (target "direction") or its shape (target "shape": only scenes whose objects differ in shape). Background
    captions are skipped (the background colour word could repeat an object's)."""
    import t2i.data.shapes as S

    out = []
    for i in range(n):
        scene, rng = S.make_scene(cfg, split, i)
        if len(scene.objects) != 2 or scene.objects[0].color == scene.objects[1].color:
            continue
        if target == "shape" and scene.objects[0].shape == scene.objects[1].shape:
            continue
        if target == "shape":
            labels = tuple(o.shape for o in scene.objects)
        else:
            labels = (scene.relation, S._INVERSE[scene.relation])
        for cap in S.caption_scene(scene, rng, per_scene):
            if "background" in cap:
                continue
            spans = []
            for o in scene.objects:
                hits = [m.span() for w in S._COLOR_WORDS[o.color] for m in re.finditer(rf"\b{w}\b", cap)]
                spans.append(hits[0] if len(hits) == 1 else None)
            for k in range(2):
                if spans[k] is not None:
                    out.append((cap, spans[k], labels[k]))
    return out


def token_features(model, tokenizer, rows, batch: int = 256):
    """(layers + 1, N, D): every layer's hidden state at the first token of each row's span."""
    import torch

    feats = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        tok = tokenizer([r[0] for r in chunk], padding=True, return_offsets_mapping=True, return_tensors="pt")
        offsets = tok.pop("offset_mapping")
        with torch.no_grad():
            hs = torch.stack(model(**tok, output_hidden_states=True).hidden_states)  # (L+1, b, T, D)
        idx = []
        for j, (_, (start, end), _) in enumerate(chunk):
            t = [k for k, (a, b) in enumerate(offsets[j].tolist()) if a >= start and b <= end and b > a]
            idx.append(t[0])
        feats.append(hs[:, torch.arange(len(chunk)), torch.tensor(idx)])
    return torch.cat(feats, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=3000, help="scenes read per split (about half have two objects)")
    p.add_argument("--per-scene", type=int, default=3, help="captions per scene")
    p.add_argument("--target", choices=("direction", "shape"), default="direction",
                   help="read from a colour word: its object's direction from the other, or its shape")  # fmt: skip
    p.add_argument("--text-encoder", default=None, help="local model folder (default: the bundled MiniLM)")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)

    import torch

    from t2i.data.shapes import ShapesConfig
    from t2i.text import TextEncoder

    t0 = time.time()
    torch.manual_seed(0)
    enc = TextEncoder(args.text_encoder, max_length=32)
    cfg = ShapesConfig(seed=0)
    tr = examples(cfg, "train", args.scenes, args.per_scene, args.target)
    te = examples(cfg, "test", args.scenes // 3, args.per_scene, args.target)
    ftr = token_features(enc.model, enc.tokenizer, tr)
    fte = token_features(enc.model, enc.tokenizer, te)
    ytr, yte = [r[2] for r in tr], [r[2] for r in te]
    major = max(set(yte), key=yte.count)
    res = {
        "text_encoder": enc.name_or_path,
        "target": args.target,
        "train_words": len(tr),
        "test_words": len(te),
        "majority_class": round(yte.count(major) / len(yte), 4),
        "layer_accuracy": {
            ("embeddings" if k == 0 else f"layer{k}"): probe(ftr[k], ytr, fte[k], yte) for k in range(ftr.shape[0])
        },
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(res, indent=1))
    if args.json:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
