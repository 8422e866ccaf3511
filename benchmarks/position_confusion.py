"""Where does a model put the object the caption places? Confusion of named vs drawn position on the one-object test
captions of `t2i eval` (same captions and seed), read by the bundled evaluator (the most occupied of its nine cells).

A model that reads the row but not the side shows up as whole rows moved across ("top left" -> "top right"): the
GAN bundles did exactly this (docs/RESULTS.md, "Left and right").

    python benchmarks/position_confusion.py checkpoints/shapes64/stackgan checkpoints/shapes64/diffusion
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import write_json  # noqa: E402


def confusion(target, num_samples: int = 500) -> dict:
    """target: a checkpoint path, "real", or a generator callable.
    -> {"matrix": {named: {drawn: count}}, "accuracy", "side_swaps" (drawn in the mirrored cell), "n"}."""
    from t2i.data.shapes import POSITIONS
    from t2i.metrics.core import EvalContext
    from t2i.pipelines import load_pipeline

    gen = target if not isinstance(target, (str, Path)) else "real" if target == "real" else load_pipeline(target)
    ctx = EvalContext(gen, "shapes", num_samples, progress=False)
    occ = ctx.cell_predictions.occupancy
    matrix = {p: dict.fromkeys(POSITIONS, 0) for p in POSITIONS}
    for attrs, o in zip(ctx.attributes, occ):
        if len(attrs["objects"]) == 1:
            matrix[attrs["objects"][0]["position"]][POSITIONS[int(o.argmax())]] += 1
    n = sum(sum(r.values()) for r in matrix.values())
    mirror = {i: 3 * (i // 3) + 2 - i % 3 for i in range(9)}
    swaps = sum(matrix[p][POSITIONS[mirror[i]]] for i, p in enumerate(POSITIONS) if mirror[i] != i)
    right = sum(matrix[p][p] for p in POSITIONS)
    return {"matrix": matrix, "accuracy": right / max(n, 1), "side_swaps": swaps / max(n, 1), "n": n}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", help="checkpoints/run folders, or 'real'")
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--json", help="write the matrices here")
    a = p.parse_args(argv)
    import torch

    from t2i.data.shapes import POSITIONS

    torch.set_num_threads(1)
    out = {}
    for t in a.targets:
        r = out[t] = confusion(t, a.num_samples)
        print(f"== {t}: {r['n']} one-object captions; position {r['accuracy']:.3f}, "
              f"drawn on the mirrored side {r['side_swaps']:.3f}")  # fmt: skip
        print("| named \\ drawn | " + " | ".join(POSITIONS) + " |")
        print("|---" * (len(POSITIONS) + 1) + "|")
        for named, row in r["matrix"].items():
            print(f"| {named} | " + " | ".join(str(row[d]) if row[d] else "." for d in POSITIONS) + " |")
    if a.json:
        write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
