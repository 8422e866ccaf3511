"""`t2i sample RUN_OR_CHECKPOINT --caption "..." [-n 8] [--seed 0] --out grid.png [--attention-maps]`.

Rows are captions, columns the n images of each. `--attention-maps` (AttnGAN) also writes, per caption, the first
image with its per-word attention maps over it (AttnGAN's signature figure) next to the grid.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

EXAMPLES = """examples:
  t2i sample checkpoints/shapes64/stackgan --caption "a small red circle in the top left corner" -n 8 --out grid.png
  t2i sample checkpoints/shapes64/attngan --caption "a blue square left of a green star" --attention-maps --out a.png
  t2i sample runs/shapes_attngan-000 --caption "a large yellow triangle" --caption "a gray heart" --seed 3 --out g.png
  t2i sample checkpoints/shapes64/diffusion --caption "a red circle left of a blue star" \
      --negative "a red circle right of a blue star" --out d.png
"""


def attention_figure(image: torch.Tensor, maps: torch.Tensor, tokens: list[str], path: Path, caption: str) -> Path:
    """The image followed by one panel per token with that token's attention map upsampled over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    T = len(tokens)
    R = image.shape[-1]
    up = F.interpolate(maps[:T, None], size=(R, R), mode="bilinear", align_corners=False)[:, 0]  # (T, R, R)
    vmax = up.max().clamp(min=1e-8)
    img = ((image.permute(1, 2, 0).clamp(-1, 1) + 1) / 2).numpy()
    fig, axes = plt.subplots(1, T + 1, figsize=(1.6 * (T + 1), 2.0))
    axes[0].imshow(img)
    axes[0].set_title("image", fontsize=8)
    for ax, tok, m in zip(axes[1:], tokens, up):
        ax.imshow(img)
        ax.imshow((m / vmax).numpy(), cmap="jet", alpha=0.55, vmin=0, vmax=1)  # one scale: words compare
        ax.set_title(tok, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def _cmd_sample(args) -> int:
    from t2i.cli import CliError
    from t2i.pipelines import load_pipeline
    from t2i.train import save_grid

    if not args.caption:
        raise CliError("give at least one --caption")
    if args.n < 1:
        raise CliError(f"-n must be >= 1, got {args.n}")
    if args.truncation is not None and args.truncation < 0:
        raise CliError(f"--truncation must be >= 0, got {args.truncation}")
    if args.negative and len(args.negative) not in (1, len(args.caption)):
        raise CliError(f"{len(args.negative)} --negative for {len(args.caption)} --caption: give one (for every "
                       "caption) or one per caption")  # fmt: skip
    pipe = load_pipeline(args.checkpoint)
    if args.negative and getattr(pipe, "family", None) != "diffusion":
        raise CliError(f"--negative is for diffusion checkpoints; {args.checkpoint} is {pipe.family!r}")
    if args.truncation is not None:
        if getattr(pipe, "family", None) not in ("stackgan", "attngan"):
            raise CliError(f"--truncation is for GAN checkpoints (StackGAN/AttnGAN); {args.checkpoint} is not one")
        pipe.truncation = args.truncation
    if args.device:
        pipe.to(args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.attention_maps:
        if getattr(pipe, "family", None) != "attngan":
            raise CliError(f"--attention-maps needs an AttnGAN checkpoint; {args.checkpoint} is {pipe.family!r}")
        images, maps = pipe.generate(args.caption, args.n, args.seed)
        last = maps[-1]  # the last refinement stage's maps: (N*k, T, H, W)
        for i, cap in enumerate(args.caption):
            p = out.with_name(f"{out.stem}-attention-{i}.png")
            attention_figure(images[i * args.n], last[i * args.n], pipe.tokens(cap), p, cap)
            print(f"attention maps: {p}")
    elif args.negative:
        neg = args.negative * len(args.caption) if len(args.negative) == 1 else args.negative
        images = pipe(args.caption, num_images_per_caption=args.n, seed=args.seed, negative_captions=neg)
    else:
        images = pipe(args.caption, num_images_per_caption=args.n, seed=args.seed)
    save_grid(images, args.n, out)
    print(f"wrote {out} ({len(args.caption)} caption(s) x {args.n} image(s), seed {args.seed})")
    return 0


def configure_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="generate an image grid from captions with a checkpoint or run folder",
        description="Generate N images per caption (rows: captions, columns: images) with a StackGAN/AttnGAN "
        "(or VQGAN/diffusion) checkpoint folder or run folder, seeded so the same call gives the same images.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint folder (config.json + *.safetensors) or run folder")
    p.add_argument("--caption", action="append", default=[], help="a caption (repeat for several rows)")
    p.add_argument("-n", type=int, default=8, help="images per caption (default 8)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--out", default="samples.png", help="output PNG (default samples.png)")
    p.add_argument("--attention-maps", action="store_true", help="AttnGAN: also write per-word attention figures")
    p.add_argument(
        "--truncation",
        type=float,
        default=None,
        metavar="PSI",
        help="GANs: scale the noise by PSI (truncation trick; 1 = as trained, 0 = one image per caption)",
    )
    p.add_argument(
        "--negative",
        action="append",
        default=[],
        metavar="CAPTION",
        help="diffusion: guide away from this caption instead of the empty one (once for every caption, or once "
        "per --caption, in order)",
    )
    p.add_argument("--device", default=None, help="cpu / cuda (default cpu)")
    p.set_defaults(func=_cmd_sample)
