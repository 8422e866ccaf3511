"""Diffusion's sampling-step trade-off: attribute accuracy and R-precision against images/s, per step count.

A GAN is one forward pass; a diffusion model pays one UNet call (two halves with classifier-free guidance) per
step. This scores a diffusion checkpoint at several step counts with the same captions and seeds as `t2i eval`, times
it with the `speed` metric, and plots both against the step count, with any reference checkpoints (e.g. AttnGAN) as
horizontal lines.

    python benchmarks/diffusion_steps.py checkpoints/shapes64/diffusion --steps 5 10 25 50 \\
        --reference AttnGAN=checkpoints/shapes64/attngan --num-samples 200 --out docs/comparison/diffusion_steps
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import save_png, write_json  # noqa: E402

METRICS = ["attribute_accuracy", "r_precision", "speed"]


class _Fixed:
    """A diffusion pipeline called with a fixed number of sampling steps and sampler."""

    def __init__(self, pipe, steps: int):
        self.pipe, self.steps, self.family, self.resolution = pipe, steps, pipe.family, pipe.resolution

    def __call__(self, captions, num_images_per_caption=1, seed=0, batch_size=64):
        return self.pipe(captions, num_images_per_caption, seed, batch_size, num_inference_steps=self.steps)


def _row(label: str, res: dict, **extra) -> dict:
    keep = ("attribute_accuracy", "r_precision", "r_precision_std", "images_per_second_bs1", "images_per_second_bs16",
            "latency_ms_bs1", "speed_device")  # fmt: skip
    return {"model": label, **extra, **{k: res[k] for k in keep if k in res}}


def plot(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    diff = [r for r in rows if r.get("steps")]
    refs = [r for r in rows if not r.get("steps")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [r["steps"] for r in diff]
    curves = (("attribute_accuracy", "o-", "attribute accuracy"), ("r_precision", "s--", "R-precision"))
    for key, style, name in curves:
        a.plot(steps, [r[key] for r in diff], style, label=f"diffusion: {name}")
        for i, r in enumerate(refs):
            a.axhline(r[key], color=f"C{2 + i}", ls=":" if key == "r_precision" else "-", lw=1,
                      label=f"{r['model']}: {name}")  # fmt: skip
    a.set_xscale("log")
    a.set_xticks(steps, [str(s) for s in steps])
    a.xaxis.set_minor_formatter(NullFormatter())
    a.set_xlabel("DDIM steps")
    a.set_ylim(0, 1)
    a.set_title("quality vs sampling steps")
    a.legend(fontsize=7)
    b.plot(steps, [r["images_per_second_bs16"] for r in diff], "o-", label="diffusion (batch 16)")
    for i, r in enumerate(refs):
        b.axhline(r["images_per_second_bs16"], color=f"C{2 + i}", label=f"{r['model']} (batch 16)")
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xticks(steps, [str(s) for s in steps])
    b.xaxis.set_minor_formatter(NullFormatter())
    b.set_xlabel("DDIM steps")
    b.set_ylabel("images / s")
    b.set_title(f"speed ({diff[0].get('speed_device', '')})" if diff else "speed")
    b.legend(fontsize=7)
    return save_png(fig, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("diffusion", help="a diffusion checkpoint or run folder")
    p.add_argument("--steps", nargs="+", type=int, default=[5, 10, 25, 50])
    p.add_argument("--reference", nargs="*", default=[], metavar="NAME=PATH", help="checkpoints drawn as lines")
    p.add_argument("--num-samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="diffusion_steps", help="writes OUT.json and OUT.png")
    p.add_argument("--replot", action="store_true", help="only redraw OUT.png from an existing OUT.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.replot:
        print(f"wrote {plot(json.loads(out.with_suffix('.json').read_text()), out)}")
        return 0

    from t2i.metrics import evaluate
    from t2i.pipelines import load_pipeline

    pipe = load_pipeline(args.diffusion)
    if pipe.family != "diffusion":
        raise SystemExit(f"{args.diffusion} is a {pipe.family} checkpoint, not diffusion")
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for s in args.steps:
        t0 = time.time()
        res = evaluate(_Fixed(pipe, s), "shapes", METRICS, num_samples=args.num_samples, seed=args.seed,
                       progress=False)  # fmt: skip
        rows.append(_row(f"diffusion ({s} steps)", res, steps=s, wall_s=round(time.time() - t0, 1)))
        print(json.dumps(rows[-1]), flush=True)
    for spec in args.reference:
        name, path = spec.split("=", 1)
        res = evaluate(load_pipeline(path), "shapes", METRICS, num_samples=args.num_samples, seed=args.seed,
                       progress=False)  # fmt: skip
        rows.append(_row(name, res, path=path))
        print(json.dumps(rows[-1]), flush=True)
    print(f"wrote {write_json(out.with_suffix('.json'), rows, indent=2)} and {plot(rows, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
