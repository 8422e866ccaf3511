"""Training throughput of the Shapes recipes: steady-state images/s of `t2i train`, per precision and thread count.

Runs each recipe for a few steps in a scratch folder (no sample grids, no in-training evaluation, one checkpoint at
the end) and reads the images/s of the steps after a warm-up from the run's own train.log, so the figure is the one a
real run logs. Close other jobs first (or say that they ran): on a 2-core machine a second job halves the figure.

    python benchmarks/train_throughput.py configs/t2i/shapes_stackgan.yaml configs/t2i/shapes_attngan.yaml \
        --precisions no bf16 --threads 1 --steps 30 --json runs/eval/train_throughput.json

bf16 here is accelerate's autocast on the CPU (matmuls and convolutions in bfloat16, which needs AVX512-BF16 or AMX to
be fast); the figure says nothing about whether a recipe still trains as well in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import write_json  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def steady_rate(log_rows: list[dict], images_per_step: int, warmup: int) -> float:
    """images/s from the first logged step >= warmup to the last, out of the cumulative images/s the log holds."""
    rows = [r for r in log_rows if "images_per_second" in r]
    first = next(r for r in rows if r["step"] >= warmup)
    last = rows[-1]
    if last["step"] <= first["step"]:
        raise ValueError(f"need logged steps after the warm-up ({warmup}); got {[r['step'] for r in rows]}")
    seconds = lambda r: r["step"] * images_per_step / r["images_per_second"]  # noqa: E731
    return (last["step"] - first["step"]) * images_per_step / (seconds(last) - seconds(first))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", nargs="+", help="recipe YAML files (configs/t2i/...)")
    ap.add_argument("--precisions", nargs="+", default=["no"], choices=["no", "bf16", "fp16"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1])
    ap.add_argument("--steps", type=int, default=30, help="training steps per measurement")
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the rate")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every recipe")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    if args.warmup >= args.steps:
        ap.error(f"--warmup ({args.warmup}) must be below --steps ({args.steps})")

    import torch
    from accelerate.state import AcceleratorState

    from t2i.metrics.core import device_name
    from t2i.train import load_recipe, train

    rows = []
    for recipe_path in args.recipes:
        for threads in args.threads:
            for prec in args.precisions:
                over = [f"train.mixed_precision={prec}", f"train.num_threads={threads}", "train.sample_every=0",
                        "train.eval_every=0", "train.log_every=1", f"train.checkpoint_every={args.steps}"]  # fmt: skip
                over += args.set
                recipe = load_recipe(recipe_path, over)
                AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton: new precision
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.time()
                    run = train(recipe, max_steps=args.steps, runs_dir=tmp, progress=False)
                    wall = time.time() - t0
                    log = [json.loads(x) for x in (run / "train.log").read_text().splitlines()]
                t = recipe["train"]
                rate = steady_rate(log, t["batch_size"] * t.get("grad_accum", 1), args.warmup)  # one process
                row = {"recipe": recipe["name"], "precision": prec, "threads": threads, "images_per_second":
                       round(rate, 1), "batch_size": t["batch_size"], "steps": args.steps, "wall_s": round(wall, 1),
                       "device": device_name("cuda" if torch.cuda.is_available() else "cpu")}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    devices = ", ".join(sorted({r["device"] for r in rows}))
    hw = f"{devices}; {os.cpu_count()} logical CPUs, torch {torch.__version__}"
    print("\n| recipe | precision | threads | images/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['precision']} | {r['threads']} | {r['images_per_second']} |")
    print(f"\nhardware: {hw}")
    if args.json:
        write_json(args.json, {"hardware": hw, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
