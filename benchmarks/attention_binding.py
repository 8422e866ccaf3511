"""Do a diffusion model's object words attend to their own object? For two-object training images (real latents,
noised to timestep t), every word that names one object (its colour or shape, as `model.grounding_weight` grounds
them) is asked where its cross-attention goes: `inside` is the share of its map inside its own object's box, and
`binding` the share of words whose map puts more mass in their own box than in the other object's. At low noise
the objects are visible, so binding is easy. With --neutral both objects are drawn as the same square, so a word can
only find its own object through the relation ("A below B": the word "A" must go to the lower place), which is
what two-object scenes fail on: there, binding 0.5 is chance.

    python benchmarks/attention_binding.py checkpoints/shapes64/diffusion runs/X/export --timesteps 100 500 800
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import write_json  # noqa: E402


@__import__("torch").no_grad()
def binding(target, timesteps, num: int = 128, seed: int = 0, neutral: bool = False) -> dict:
    import torch

    from t2i.data.dataset import pil_to_tensor
    from t2i.data.shapes import ShapesConfig, make_sample
    from t2i.models.diffusion import box_masks, grounding_targets, install_recorder
    from t2i.pipelines import load_pipeline

    pipe = load_pipeline(target)
    if pipe.family != "diffusion" or pipe.vqvae is None:
        raise SystemExit(f"{target}: not a latent diffusion pipeline")
    enc = pipe.text_encoder
    cfg = ShapesConfig(size=pipe.resolution)
    caps, attrs, imgs, i = [], [], [], 0
    while len(caps) < num:
        s = make_sample(cfg, "train", i)
        i += 1
        if len(s.attributes["objects"]) == 2:
            caps.append(s.captions[len(caps) % len(s.captions)])
            attrs.append(s.attributes)
            imgs.append(pil_to_tensor(_neutral_image(s.attributes, pipe.resolution) if neutral else s.image))
    x0 = pipe.vqvae.encode(torch.stack(imgs).float()).latents * pipe.config.latent_scale
    feats = enc.encode(caps)
    boxes, valid = grounding_targets(enc.tokenizer, caps, attrs, feats.words.shape[1], enc.max_length)
    # The other object's box for every grounded token (two objects: the box that is not its own).
    obj_boxes = [[torch.tensor(b) for b in _boxes(a)] for a in attrs]
    other = torch.zeros_like(boxes)
    for b in range(num):
        for t in range(boxes.shape[1]):
            if valid[b, t]:
                own = obj_boxes[b][0] if torch.equal(boxes[b, t], obj_boxes[b][0]) else obj_boxes[b][1]
                other[b, t] = obj_boxes[b][1] if own is obj_boxes[b][0] else obj_boxes[b][0]
    words = feats.words
    if pipe.word_adapter is not None:  # what the UNet reads: the adapter's output, as in the pipeline
        words = pipe.word_adapter.float().eval()(words, feats.mask)
    unet = pipe.unet.float().eval()
    rec = install_recorder(unet)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for ts in timesteps:
        noise = torch.randn(x0.shape, generator=g)
        t = torch.full((num,), int(ts))
        xt = pipe_scheduler_add_noise(pipe, x0, noise, t)
        rec.maps.clear()
        rec.active = True
        unet(xt, t, encoder_hidden_states=words, encoder_attention_mask=feats.mask)
        rec.active = False
        ins, bind = [], []
        for p in rec.maps:
            q = p.shape[2]
            side = int(round(q**0.5))
            a = p.float().mean(1).transpose(1, 2)
            a = a / a.sum(-1, keepdim=True).clamp(min=1e-12)
            mine = (a * box_masks(boxes, side, side)).sum(-1)
            theirs = (a * box_masks(other, side, side)).sum(-1)
            ins.append(mine[valid])
            bind.append((mine > theirs).float()[valid])
        out[int(ts)] = {"inside": float(torch.cat(ins).mean()), "binding": float(torch.cat(bind).mean()),
                        "tokens": int(valid.sum())}  # fmt: skip
    return out


def _neutral_image(attrs, size):
    """The scene with both objects drawn as the same shape and colour (unjittered): where the objects are stays
    visible, which is which does not, so only the caption's relation can tell a word which place is its own."""
    from t2i.data.shapes import Scene, ShapeObject, render_scene

    colour = "white" if attrs["background"] != "white" else "black"
    objs = tuple(ShapeObject("square", colour, o["size"], o["position"]) for o in attrs["objects"])
    return render_scene(Scene(attrs["background"], objs), size)


def _boxes(attrs):
    from t2i.data.shapes import object_box

    return [object_box(o) for o in attrs["objects"]]


def pipe_scheduler_add_noise(pipe, x0, noise, t):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    return sched.add_noise(x0, noise, t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", help="latent diffusion checkpoints / run folders")
    p.add_argument("--timesteps", type=int, nargs="+", default=[100, 300, 500, 700, 900])
    p.add_argument("--num", type=int, default=128, help="two-object training captions (default 128)")
    p.add_argument(
        "--neutral",
        action="store_true",
        help="draw both objects as the same white (or black) square: only the relation says which is which",
    )
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    res = {}
    for tgt in a.targets:
        r = res[tgt] = binding(tgt, a.timesteps, a.num, neutral=a.neutral)
        print(f"== {tgt}: {a.num} two-object training captions, {next(iter(r.values()))['tokens']} grounded words")
        print("| timestep | " + " | ".join(str(t) for t in r) + " |")
        print("|---" * (len(r) + 1) + "|")
        for k in ("inside", "binding"):
            print(f"| {k} | " + " | ".join(f"{v[k]:.3f}" for v in r.values()) + " |")
    if a.json:
        write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
