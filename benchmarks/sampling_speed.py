"""Sampling speed of every family on this machine: images/s at batch 1 and 16, latency, peak memory.

Speed does not depend on the weights, only on the architecture, so a family without a bundled checkpoint is timed
with its recipe's (untrained) network; say which in any report. Diffusion is timed at several step counts.

    python benchmarks/sampling_speed.py --json docs/speed.json
    python benchmarks/sampling_speed.py --checkpoint AttnGAN=checkpoints/shapes64/attngan --diffusion-steps 10 25 50
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"StackGAN": "shapes_stackgan", "AttnGAN": "shapes_attngan", "Diffusion": "shapes_diffusion"}


def untrained_pipeline(name: str):
    """The pipeline of a recipe's network with fresh weights (same architecture, same cost)."""
    import yaml

    recipe = yaml.safe_load((ROOT / "configs/t2i" / f"{RECIPES[name]}.yaml").read_text())
    model = dict(recipe["model"])
    if name == "Diffusion":
        from t2i.models.diffusion import DiffusionConfig, build_pipeline

        vq = None
        if model.get("autoencoder"):  # latent diffusion: the recipe's autoencoder (trained) decodes
            from t2i.models.vqgan import latent_side, load_autoencoder

            vq = load_autoencoder(model["autoencoder"])
            model.update(in_channels=vq.config.latent_channels, resolution=latent_side(vq), latent_scale=1.0)
        pipe = build_pipeline(DiffusionConfig(**model), vqvae=vq)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    from t2i.pipelines import T2IPipeline, build_generator

    family = recipe["family"]
    model.pop("damsm_checkpoint", None)
    G, cfg = build_generator(family, model)
    return T2IPipeline(family, G, cfg)


class _Steps:
    """A diffusion pipeline called with a fixed number of sampling steps (what `speed` times)."""

    def __init__(self, pipe, steps: int):
        self.pipe, self.steps, self.family, self.resolution = pipe, steps, pipe.family, pipe.resolution

    def __call__(self, captions, num_images_per_caption=1, seed=0, batch_size=64):
        return self.pipe(captions, num_images_per_caption, seed, batch_size, num_inference_steps=self.steps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="*", default=[], metavar="NAME=PATH", help="time these instead of recipes")
    p.add_argument("--families", nargs="*", default=list(RECIPES), help="recipe families to time")
    p.add_argument("--diffusion-steps", nargs="*", type=int, default=[25])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from t2i.metrics import evaluate
    from t2i.pipelines import load_pipeline

    pipes = {}
    for spec in args.checkpoint:
        name, path = spec.split("=", 1)
        pipes[name] = (load_pipeline(path), f"checkpoint {path}")
    for name in args.families:
        if name not in pipes:
            pipes[name] = (untrained_pipeline(name), f"recipe configs/t2i/{RECIPES[name]}.yaml (untrained weights)")
    rows = []
    for name, (pipe, source) in pipes.items():
        variants = (
            [(f"{name} ({s} steps)", _Steps(pipe, s)) for s in args.diffusion_steps]
            if pipe.family == "diffusion"
            else [(name, pipe)]
        )
        for label, gen in variants:
            res = evaluate(gen, "shapes", ["speed"], num_samples=16, progress=False)
            row = {
                "model": label,
                "source": source,
                **{
                    k: res[k]
                    for k in res
                    if k
                    in (
                        "images_per_second_bs1",
                        "images_per_second_bs16",
                        "latency_ms_bs1",
                        "peak_memory_mb",
                        "speed_device",
                    )
                },
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        write_json(args.json, rows, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
