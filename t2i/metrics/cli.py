"""`t2i eval` and `t2i compare`: score a checkpoint (or held-out real images) and compare several side by side."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

EVAL_EPILOG = """examples:
  t2i eval real --dataset shapes --num-samples 500                      # the real-data ceiling / floor
  t2i eval checkpoints/shapes64/attngan --num-samples 500 --json attngan.json
  t2i eval runs/stackgan-001 --metrics attribute_accuracy,r_precision --num-samples 200
  t2i eval runs/attngan-002 --inception-weights pt_inception-2015-12-05.pth   # + standard FID/KID/IS

Figures are printed, written to --json, and appended to eval.jsonl next to the checkpoint (real: runs/eval-real.jsonl).
Metrics: attribute_accuracy, fid, kid, r_precision, diversity, speed (default set) and clip_score (--clip-model DIR).
"""

COMPARE_EPILOG = """examples:
  t2i compare checkpoints/shapes64/stackgan checkpoints/shapes64/attngan --out docs/comparison
  t2i compare runs/attngan-001 runs/attngan-002 --out cmp --captions my_captions.txt --num-samples 200

Writes DIR/report.md (metrics table with a real-data reference row), DIR/grid.png (rows captions, columns models,
same seed), DIR/metrics.png (bars), DIR/quality_vs_latency.png and DIR/results.json.
"""

# Printed in this order (when present) by `t2i eval`.
SUMMARY_KEYS = (
    "attribute_accuracy", "attribute_accuracy_one_object", "attribute_accuracy_two_objects", "acc_shape", "acc_color",
    "acc_size", "acc_position", "acc_relation", "acc_count", "fid", "kid", "kid_std", "fid_inception",
    "kid_inception", "inception_score", "r_precision", "r_precision_std", "clip_score", "diversity",
    "images_per_second_bs1", "images_per_second_bs16", "latency_ms_bs1", "peak_memory_mb", "speed_device",
)  # fmt: skip


def _error(msg: str):
    from t2i.cli import CliError

    return CliError(msg)


def load_generator(target: str):
    """'real' stays a string; anything else goes through t2i.pipelines.load_pipeline (imported lazily)."""
    if target == "real":
        return "real"
    if not Path(target).exists():
        raise _error(f"{target}: no such checkpoint or run folder")
    try:
        from t2i.pipelines import load_pipeline
    except ImportError as e:
        raise _error(f"cannot load {target}: t2i.pipelines is not available ({e})") from e
    return load_pipeline(target)


def _options(args) -> dict:
    opts = {}
    for k in ("inception_weights", "clip_model", "kid_subset_size", "diversity_k", "diversity_captions", "split"):
        v = getattr(args, k, None)
        if v is not None:
            opts[k] = v
    return opts


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="shapes", help="'shapes' (default) or a dataset folder (needs --evaluator)")
    p.add_argument("--num-samples", type=int, default=500, help="captions (= generated images) scored (default 500)")
    p.add_argument("--metrics", default=None, help="comma-separated subset (default: all that apply)")
    p.add_argument("--seed", type=int, default=0, help="picks the captions and the generators' noise (default 0)")
    p.add_argument("--evaluator", default=None, help="evaluation networks folder (default: bundled Shapes 64x64)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    p.add_argument("--inception-weights", default=None, metavar="FILE",
                   help="local Inception file (torch-fidelity FID Inception) for standard FID/KID/IS")  # fmt: skip
    p.add_argument("--clip-model", default=None, metavar="DIR", help="local CLIP folder: enables clip_score")
    p.add_argument("--kid-subset-size", type=int, default=None, help="KID subset size (default 100)")
    p.add_argument("--diversity-k", type=int, default=None, help="images per caption for diversity (default 8)")
    p.add_argument("--diversity-captions", type=int, default=None, help="captions for diversity (default 20)")
    p.add_argument("--split", default=None, choices=["train", "test"],
                   help="whose captions: 'test' (default, scenes never trained on) or 'train' (images 0..N-1 of "
                   "the training split, what the Shapes recipes train on): the gap between them is overfitting",
                   )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_eval(args) -> int:
    from t2i.metrics import append_jsonl, evaluate

    gen = load_generator(args.target)
    if hasattr(gen, "to") and args.device:
        gen = gen.to(args.device)
    res = evaluate(
        gen, args.dataset, args.metrics, num_samples=args.num_samples, seed=args.seed, evaluator=args.evaluator,
        device=args.device, progress=not args.quiet, **_options(args),
    )  # fmt: skip
    res["target"] = args.target
    argv = sys.argv[1:]
    res["command"] = "t2i " + " ".join(shlex.quote(a) for a in argv) if argv[:1] == ["eval"] else ""
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    if not args.no_log:
        t = Path(args.target)
        log = Path(args.log) if args.log else (t if t.is_dir() else t.parent) / "eval.jsonl"
        if args.target == "real" and not args.log:
            log = Path("runs") / "eval-real.jsonl"
        append_jsonl(log, res)
    width = max(len(k) for k in SUMMARY_KEYS)
    print(f"{args.target} on {args.dataset}: {res['num_samples']} samples, seed {res['seed']}, {res['device']}")
    for k in SUMMARY_KEYS:
        if res.get(k) is not None:
            v = res[k]
            print(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")
    return 0


def cmd_compare(args) -> int:
    from t2i.metrics.compare import compare, read_captions

    names, pipes = [], {}
    for t in args.checkpoints:
        name = Path(t).name or t
        if name in pipes:  # two runs with the same folder name
            name = str(Path(t))
        pipes[name] = load_generator(t)
        if pipes[name] == "real":
            raise _error("compare takes checkpoints; the real-data reference row is added automatically")
        if args.device:
            pipes[name] = pipes[name].to(args.device)
        names.append(name)
    caps = read_captions(args.captions) if args.captions else None
    cmd = "t2i compare " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["compare"] else ""
    res = compare(pipes, args.out, dataset=args.dataset, metrics=args.metrics, num_samples=args.num_samples,
                  seed=args.seed, captions=caps, evaluator=args.evaluator, device=args.device,
                  progress=not args.quiet, command=cmd, **_options(args))  # fmt: skip
    print(f"wrote {res['out']}/report.md, grid.png, metrics.png, quality_vs_latency.png, results.json")
    return 0


def configure_parser(subparsers) -> None:
    e = subparsers.add_parser(
        "eval",
        help="score a checkpoint (or held-out real images): faithfulness, quality, diversity, speed",
        description="Score a checkpoint or run folder (or 'real': held-out real images scored as if generated) on "
        "seeded test captions with the offline evaluation networks.",
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("target", metavar="RUN_OR_CHECKPOINT|real")
    _add_common(e)
    e.add_argument("--json", default=None, metavar="FILE", help="also write the flat results here")
    e.add_argument("--log", default=None, metavar="FILE", help="jsonl to append to (default: next to the checkpoint)")
    e.add_argument("--no-log", action="store_true", help="do not append to a jsonl")
    e.set_defaults(func=cmd_eval)

    c = subparsers.add_parser(
        "compare",
        help="same captions and seeds through several models: report.md, grid.png, plots",
        description="Run every checkpoint on the same captions and seeds, score them with `t2i eval`'s metrics "
        "next to a held-out real-data reference row, and write a report with a sample grid and plots.",
        epilog=COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("checkpoints", nargs="+", metavar="CKPT")
    c.add_argument("--out", required=True, metavar="DIR", help="output folder")
    c.add_argument("--captions", default=None, metavar="FILE", help="grid captions, one per line (default: 8 test)")
    _add_common(c)
    c.set_defaults(func=cmd_compare)
