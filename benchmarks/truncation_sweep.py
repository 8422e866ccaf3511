"""Does a GAN's miss come from its noise? Attribute accuracy, FID and diversity against the truncation psi.

Every noise a StackGAN/AttnGAN pipeline draws (z and conditioning augmentation's eps) is scaled by psi
(`T2IPipeline.truncation`, `t2i sample --truncation`). If a generator knows where and what to draw for a caption but
its noise scatters it, accuracy climbs as psi falls (BigGAN's truncation trick); if accuracy stays flat down to
psi = 0 (one image per caption), the caption -> image mapping itself is wrong. The same test captions and seed as
`t2i eval` (a diagnostic; no default is picked from it).

    python benchmarks/truncation_sweep.py checkpoints/shapes64/stackgan --psi 1 0.7 0.5 0.3 0 --num-samples 500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import write_json  # noqa: E402

KEYS = ("attribute_accuracy", "attribute_accuracy_one_object", "acc_color", "acc_shape", "acc_position",
        "acc_relation", "fid", "diversity")  # fmt: skip


def sweep(checkpoint: str, psis: list[float], num_samples: int = 500) -> list[dict]:
    from t2i.metrics.core import evaluate
    from t2i.pipelines import load_pipeline

    pipe = load_pipeline(checkpoint)
    if getattr(pipe, "family", None) not in ("stackgan", "attngan"):
        raise SystemExit(f"{checkpoint}: truncation is for StackGAN/AttnGAN checkpoints")
    rows = []
    for psi in psis:
        pipe.truncation = psi
        r = evaluate(pipe, "shapes", ["attribute_accuracy", "fid", "diversity"], num_samples=num_samples,
                     progress=False)  # fmt: skip
        rows.append({"psi": psi, **{k: r[k] for k in KEYS}})
        print(" | ".join([f"psi {psi:g}"] + [f"{k} {r[k]:.3f}" for k in KEYS]), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--psi", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.3, 0.0])
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    rows = sweep(a.checkpoint, a.psi, a.num_samples)
    if a.json:
        write_json(a.json, {"checkpoint": a.checkpoint, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
