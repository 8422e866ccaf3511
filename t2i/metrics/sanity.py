"""Do the metrics move the right way? Score held-out real images, corrupted and mis-assigned, and noise.

    python -m t2i.metrics.sanity --num-samples 500 [--json runs/eval/sanity500.json]

Rows: real images as they are (the reference), real images with colours corrupted (RGB -> BRG channel swap), real
images with captions shuffled (each caption gets the previous caption's image) and uniform noise; every row is
scored on the same seeded test captions by `evaluate()`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from t2i.metrics.core import evaluate

KEYS = ("attribute_accuracy", "acc_shape", "acc_color", "fid", "kid", "kid_std", "r_precision", "r_precision_std")


class FixedImages:
    """A generator stand-in that returns a fixed image tensor in caption order (diversity: each image repeated)."""

    resolution = 64

    def __init__(self, images: torch.Tensor, name: str):
        self.images, self.name, self.family = images, name, "fixed"
        self.resolution = images.shape[-1]

    def __call__(self, captions, num_images_per_caption=1, seed=0, batch_size=64):
        if num_images_per_caption > 1:
            return self.images[: len(captions)].repeat_interleave(num_images_per_caption, 0)
        return self.images[seed : seed + len(captions)]  # evaluate() offsets the seed by the chunk start


class UniformNoise:
    family, name = "noise", "uniform noise"

    def __init__(self, resolution: int = 64):
        self.resolution = resolution

    def __call__(self, captions, num_images_per_caption=1, seed=0, batch_size=64):
        g = torch.Generator().manual_seed(seed)
        n = len(captions) * num_images_per_caption
        return torch.rand(n, 3, self.resolution, self.resolution, generator=g) * 2 - 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0, help="must stay 0: the fixed image sets follow evaluate()'s chunks")
    ap.add_argument("--evaluator", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from t2i.metrics.core import EvalContext

    ctx = EvalContext("real", "shapes", args.num_samples, args.seed, args.evaluator, "cpu", False, {})
    real = ctx.images  # (N, 3, R, R): the held-out test images evaluate("real") scores
    rows = {
        "real (reference)": "real",
        "real, colours corrupted (RGB -> BRG)": FixedImages(real[:, [2, 0, 1]], "colour-swapped"),
        "real, captions shuffled (rolled by one)": FixedImages(torch.roll(real, 1, 0), "shuffled"),
        "uniform noise": UniformNoise(real.shape[-1]),
    }
    out = {}
    for name, gen in rows.items():
        t = time.time()
        r = evaluate(gen, "shapes", ["attribute_accuracy", "fid", "kid", "r_precision"], num_samples=args.num_samples,
                     seed=args.seed, evaluator=args.evaluator, progress=False)  # fmt: skip
        out[name] = {k: r.get(k) for k in KEYS} | {"time_s": round(time.time() - t, 1)}
        print(f"{name:<42} " + "  ".join(f"{k}={out[name][k]}" for k in KEYS), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
