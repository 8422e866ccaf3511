"""What a latent model can at best score: attribute accuracy of an autoencoder's *reconstructions* of real test images.

VQGAN's prior and latent diffusion both draw through the autoencoder's decoder, so whatever the autoencoder loses
(a colour it merges, a shape it rounds off) no prior can put back. This reconstructs N held-out Shapes images (the
same test split `t2i eval` draws its captions from) and scores them with #4's recogniser against their true
attributes, beside the real images' own score.

    python benchmarks/autoencoder_ceiling.py checkpoints/shapes64/vqgan --num-samples 500
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("autoencoder", help="VQGAN stage-1 run/export, VQGAN bundle or latent-diffusion bundle")
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="Shapes generator seed of the test split")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)

    from t2i.data.dataset import load_dataset
    from t2i.metrics.attributes import score_predictions, summarize
    from t2i.metrics.networks import decode_cells, load_evaluator
    from t2i.models.vqgan import load_autoencoder, vq_decode_indices, vq_encode

    t0 = time.time()
    vq = load_autoencoder(args.autoencoder)
    ds = load_dataset("shapes:test", "test", vq.config.sample_size, length=args.num_samples, seed=args.seed)
    x = torch.stack([ds[i].image for i in range(len(ds))])
    attrs = [ds[i].attributes for i in range(len(ds))]
    with torch.no_grad():
        rec = torch.cat([vq_decode_indices(vq, vq_encode(vq, c).indices) for c in x.split(64)]).clamp(-1, 1)
        ev = load_evaluator(None)
        out = {}
        for name, imgs in (("real", x), ("reconstructed", rec)):
            logits = torch.cat([ev.recognizer(c) for c in imgs.split(128)])
            out[name] = summarize(score_predictions(decode_cells(logits), attrs))
    out["l1"] = float((x - rec).abs().mean())
    out["autoencoder"] = args.autoencoder
    out["num_samples"] = len(ds)
    keys = ["attribute_accuracy", "acc_color", "acc_shape", "acc_size", "acc_position", "acc_relation", "acc_count"]
    print(f"{args.autoencoder}: {len(ds)} Shapes test images, L1 {out['l1']:.4f} ({time.time() - t0:.1f} s)")
    print(f"  {'':<20}{'real':>8}{'recon':>8}")
    for k in keys:
        r, c = out["real"].get(k), out["reconstructed"].get(k)
        if r is not None:
            print(f"  {k:<20}{r:8.3f}{c:8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
