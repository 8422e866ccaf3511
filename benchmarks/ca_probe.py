"""How much of the caption survives conditioning augmentation? Linear probes on CA's mu and on its sample c.

StackGAN's generator and AttnGAN's first stage see the caption only through c = mu + noise * sigma * eps (CA). This
fits a multinomial logistic regression per attribute (shape, colour, size, position) of one-object Shapes captions
on the generator's mu and on c with the generator's own noise scale (one eps per caption), trains on train scenes and
scores test scenes. A large drop from mu to c means the noise drowns that attribute: the generator cannot draw what
it cannot read. It also prints the spread of mu across captions against the mean sigma.

    python benchmarks/ca_probe.py checkpoints/shapes64/stackgan checkpoints/shapes64/attngan --json runs/eval/ca.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sentence_probe import ATTRS, encode_sentences, one_object_captions, probe  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="StackGAN / AttnGAN exports or run folders")
    ap.add_argument("--train-scenes", type=int, default=4000)
    ap.add_argument("--test-scenes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="CA noise seed")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)

    import torch

    import t2i.data.shapes as S
    from t2i.pipelines import load_pipeline
    from t2i.text import TextEncoder, default_cache_dir

    torch.set_num_threads(1)
    enc = TextEncoder(cache_dir=default_cache_dir())
    cfg = S.ShapesConfig()
    tr_c, tr_y = one_object_captions(cfg, "train", args.train_scenes, per_scene=2)
    te_c, te_y = one_object_captions(cfg, "test", args.test_scenes, per_scene=2)
    xtr, xte = encode_sentences(enc, tr_c), encode_sentences(enc, te_c)
    out = {"train_captions": len(tr_c), "test_captions": len(te_c), "models": {}}
    for path in args.checkpoints:
        G = load_pipeline(path).generator
        ca = G.ca if hasattr(G, "ca") else G.stage1.ca  # StackGAN: stage I's CA (the one that sets the layout)
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            (ctr, mtr, lvtr), (cte, mte, _) = ca(xtr, gen), ca(xte, gen)
        row = {"ca_noise": ca.noise, "mu_spread": round(mtr.std(0).mean().item(), 4),
               "sigma": round((0.5 * lvtr).exp().mean().item(), 4), "probe_mu": {}, "probe_c": {}}  # fmt: skip
        for k in ATTRS:
            row["probe_mu"][k] = probe(mtr, tr_y[k], mte, te_y[k])
            row["probe_c"][k] = probe(ctr, tr_y[k], cte, te_y[k])
        out["models"][path] = row
        print(f"{path}: noise {ca.noise:g}, mu spread {row['mu_spread']:.3f} vs sigma {row['sigma']:.3f}")
        for k in ATTRS:
            print(f"  {k:<9} from mu {row['probe_mu'][k]:.3f}   from c {row['probe_c'][k]:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
