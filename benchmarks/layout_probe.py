"""Where does a model put the object? Centroid of the drawn object for one caption per Shapes position.

For each of the nine positions, "a large red circle <position phrase>" is sampled with N seeds; the object mask is
every pixel far from the image's median colour (the background), and its centroid (x right, y down, in [0, 1]) is
averaged over the seeds, with the spread across seeds. A model that follows the caption lands near the cell centres
(0.17 / 0.5 / 0.83); one that ignores it lands in the same place for every row (or anywhere, with a large spread).

    python benchmarks/layout_probe.py checkpoints/shapes64/attngan checkpoints/shapes64/diffusion
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PHRASES = {"top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
           "left": "on the left", "centre": "in the centre", "right": "on the right",
           "bottom left": "in the bottom left corner", "bottom": "at the bottom",
           "bottom right": "in the bottom right corner"}  # fmt: skip


def centroids(images, threshold: float = 0.6):
    """images (N, 3, H, W) in [-1, 1] -> (cx (N,), cy (N,), mask area (N,)) of the pixels off the median colour."""
    import torch

    bg = images.flatten(2).median(dim=2).values[:, :, None, None]
    m = ((images - bg).abs().sum(1) > threshold).float()
    h = m.shape[-1]
    grid = (torch.arange(h).float() + 0.5) / h
    w = m.sum((1, 2)).clamp(min=1)
    return (m.sum(1) * grid).sum(1) / w, (m.sum(2) * grid).sum(1) / w, m.mean((1, 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("-n", type=int, default=16, help="seeds per caption")
    ap.add_argument("--json", help="write the centroids here")
    args = ap.parse_args(argv)
    import torch

    from t2i.pipelines import load_pipeline

    torch.set_num_threads(1)
    out = {}
    for ck in args.checkpoints:
        pipe, rows = load_pipeline(ck), {}
        print(f"== {ck}: mean centroid x, y (spread over {args.n} seeds); cell centres 0.17 / 0.5 / 0.83")
        for pos, phrase in PHRASES.items():
            cx, cy, area = centroids(pipe([f"a large red circle {phrase}"], args.n, seed=0))
            rows[pos] = {"x": round(cx.mean().item(), 3), "y": round(cy.mean().item(), 3),
                         "x_std": round(cx.std().item(), 3), "y_std": round(cy.std().item(), 3)}  # fmt: skip
            print(f"  {pos:12s} x {cx.mean():.2f} ({cx.std():.2f})  y {cy.mean():.2f} ({cy.std():.2f})  "
                  f"area {area.mean():.3f}")  # fmt: skip
        out[ck] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
