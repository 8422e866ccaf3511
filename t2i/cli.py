"""`t2i`: data, train, sample, eval and compare for the text-to-image families.

Each sub-command lives next to the code it drives and registers itself through a `configure_parser(subparsers)`
function; this module only lists them, so `t2i --help` shows every command that is installed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

EPILOG = """examples:
  t2i data shapes --out data/shapes64 --num 2000 --size 64 --split train
  t2i data inspect data/shapes64 --grid inspect.png
  t2i train configs/t2i/shapes_attngan.yaml --max-steps 2000
  t2i sample checkpoints/shapes64/attngan --caption "a small red circle in the top left corner" -n 8 --out grid.png
  t2i eval checkpoints/shapes64/attngan --dataset shapes --num-samples 500
  t2i compare checkpoints/shapes64/* --out docs/comparison
"""

# Modules that add sub-commands (each defines configure_parser(subparsers)); missing ones are simply not listed.
COMMAND_MODULES = ("t2i.train", "t2i.sample", "t2i.metrics.cli")


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


def _cmd_data_shapes(args) -> int:
    from t2i.data.shapes import ShapesConfig, export_shapes

    holdout = [tuple(p.split("-", 1)) for p in args.holdout] if args.holdout else []
    cfg = ShapesConfig(
        size=args.size,
        seed=args.seed,
        captions_per_image=args.captions,
        two_object_prob=args.two_object_prob,
        holdout_pairs=holdout,
    )
    out = export_shapes(args.out, args.num, cfg, args.split)
    print(f"wrote {args.num} {args.split} images ({args.size}x{args.size}) and metadata.jsonl to {out}")
    return 0


def _cmd_data_inspect(args) -> int:
    from t2i.data.inspect import inspect_dataset

    stats = inspect_dataset(args.path, split=args.split, size=args.size, num=args.num, grid_path=args.grid)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"dataset:            {stats['dataset']}")
    print(f"images:             {stats['images']}")
    cpi = stats["captions_per_image"]
    print(f"captions:           {stats['captions']} ({cpi['min']}-{cpi['max']} per image, mean {cpi['mean']:.2f})")
    cw = stats["caption_words"]
    print(f"caption length:     {cw['min']}-{cw['max']} words, mean {cw['mean']:.1f}")
    print(f"vocabulary:         {stats['vocabulary']} words")
    print("top words:          " + ", ".join(f"{w} ({n})" for w, n in stats["top_words"]))
    print(f"unreadable images:  {len(stats['unreadable_images'])}")
    for s in stats["unreadable_images"][:20]:
        print(f"  {s}")
    for p in stats["problems"]:
        print(f"problem: {p}")
    if stats.get("grid"):
        print(f"grid:               {stats['grid']}")
    return 0


def _cmd_data_encode(args) -> int:
    import time

    from tqdm.auto import tqdm

    from t2i.data.dataset import load_dataset
    from t2i.text import TextEncoder, default_cache_dir

    ds = load_dataset(args.path, split=args.split, size=8, length=args.num)
    caps = [c for i in range(len(ds)) for c in (ds.records[i].captions if hasattr(ds, "records") else ds[i].captions)]
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    enc = TextEncoder(args.encoder, max_length=args.max_length, cache_dir=args.cache_dir or default_cache_dir(),
                      device=device, layer=args.text_layer)  # fmt: skip
    t0, chunk = time.time(), 2048
    for i in tqdm(range(0, len(caps), chunk), desc="encoding captions", unit="chunk"):
        enc.encode(caps[i : i + chunk])
    dt = time.time() - t0
    print(
        f"{len(caps)} captions ({len(set(caps))} distinct) in {dt:.1f}s on {device}; "
        f"cache {enc.cache.root} holds {len(enc.cache)}"
    )
    return 0


def _configure_data(sub) -> None:
    p = sub.add_parser("data", help="make the Shapes dataset or inspect a dataset", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser(
        "shapes",
        help="export procedural Shapes images + metadata.jsonl (imagefolder layout)",
        description="Write DIR/*.png and DIR/metadata.jsonl: one row per image with its captions and attributes.",
        epilog="example: t2i data shapes --out data/shapes64 --num 2000 --size 64 --split train --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--num", type=int, default=1000, help="number of images (default 1000)")
    s.add_argument("--size", type=int, default=64, help="square resolution in pixels (default 64)")
    s.add_argument("--split", default="train", choices=["train", "test", "compositional"],
                   help="train and test never share a scene; compositional = scenes with held-out pairs")  # fmt: skip
    s.add_argument("--seed", type=int, default=0, help="dataset seed; (seed, split, index) fixes each image")
    s.add_argument("--captions", type=int, default=5, help="captions per image (default 5)")
    s.add_argument("--two-object-prob", type=float, default=0.5, help="share of two-object scenes (default 0.5)")
    s.add_argument("--holdout", nargs="*", metavar="COLOUR-SHAPE",
                   help="(colour, shape) pairs kept out of train, e.g. red-circle blue-star")  # fmt: skip
    s.set_defaults(func=_cmd_data_shapes)
    i = dsub.add_parser(
        "inspect",
        help="statistics of a dataset and a grid PNG of images with captions",
        description="Print images, captions per image, caption length and vocabulary statistics and unreadable "
        "files of PATH (shapes, imagefolder, CUB/Oxford-102 or COCO layout, detected from the path).",
        epilog="example: t2i data inspect data/birds --split test --grid birds.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("path", help="dataset folder, or 'shapes'")
    i.add_argument("--split", default="train", help="split to read (default train)")
    i.add_argument("--size", type=int, default=64, help="resolution used for the grid (default 64)")
    i.add_argument("--num", type=int, default=None, help="read at most this many images (Shapes: default 1000)")
    i.add_argument("--grid", default=None, help="write a grid PNG of 16 images with their captions here")
    i.add_argument("--json", action="store_true", help="print the statistics as JSON")
    i.set_defaults(func=_cmd_data_inspect)
    e = dsub.add_parser(
        "encode",
        help="encode a dataset's captions once into the on-disk feature cache",
        description="Run the text encoder over every caption of PATH and store the features (safetensors shards "
        "keyed by encoder fingerprint and caption) so training and evaluation never encode them again.",
        epilog="example: t2i data encode shapes --num 10000 --split train",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("path", help="dataset folder, or 'shapes'")
    e.add_argument("--split", default="train", help="split to read (default train)")
    e.add_argument("--num", type=int, default=None, help="first N images only (Shapes: default 50000)")
    e.add_argument("--encoder", default=None, help="local HF model folder or hub id (default: bundled MiniLM)")
    e.add_argument("--max-length", type=int, default=32, help="token limit (default 32)")
    e.add_argument("--text-layer", type=int, default=-1,
                   help="hidden state the word features come from, as data.text_layer (default -1: last)")  # fmt: skip
    e.add_argument("--cache-dir", default=None, help="cache folder (default $MMGAN_CACHE/text or ~/.cache/mmgan/text)")
    e.add_argument("--device", default=None, help="where the encoder runs (default: cuda when available, else cpu)")
    e.set_defaults(func=_cmd_data_encode)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2i",
        description="Text-to-image GANs (StackGAN, AttnGAN) with VQGAN and diffusion baselines.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _configure_data(sub)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                continue  # this command (or its package) is not part of the install yet
            raise
        mod.configure_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, FileNotFoundError, OSError) as e:
        # Expected user errors (bad paths, bad config values, unknown layouts): a clear line, no traceback.
        from t2i.data.formats import DatasetFormatError

        kind = "error" if isinstance(e, (CliError, DatasetFormatError)) else type(e).__name__
        print(f"t2i: {kind}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
