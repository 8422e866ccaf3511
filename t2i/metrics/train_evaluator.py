"""Train the evaluation networks (attribute recognizer + image-text matcher) from a recipe.

    python -m t2i.metrics.train_evaluator configs/t2i/shapes_evaluator.yaml [--out DIR] [--only recognizer|matcher]

Shapes: both networks learn from real Shapes *train* images only; their held-out figures are on the test split.
Another dataset (`dataset: PATH` in the recipe, any layout `load_dataset` reads): it has no attributes, so only the
matcher is trained, on its train split minus the last `val_images` images (held out), and its image encoder becomes
the FID/KID/diversity feature network (`feature_network: matcher` in config.json).
Images are rendered once into a uint8 pool (train indices 0..N-1, whose captions are already in the text-feature
cache) and augmented on the fly (shift, noise, blur) so the networks are not brittle on generated images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from t2i.data.shapes import ShapesConfig, make_sample
from t2i.metrics.core import sentence_features
from t2i.metrics.networks import (
    AttributeRecognizer,
    Evaluator,
    EvaluatorConfig,
    ImageTextMatcher,
    calibrate_features,
    cell_loss,
    cell_targets,
    decode_cells,
    load_evaluator,
    save_evaluator,
)

DEFAULTS = {
    "out": "checkpoints/shapes64/evaluator",
    "seed": 0,
    "threads": 1,
    "resolution": 64,
    "dataset": "shapes",  # or a dataset folder (matcher only)
    "dataset_seed": 0,
    "architecture": {},  # EvaluatorConfig overrides, e.g. {channels: [32, 64], feature_dim: 128}
    "recognizer": {"num_images": 20000, "epochs": 10, "batch_size": 64, "lr": 2e-3},
    "matcher": {"num_images": 10000, "epochs": 12, "batch_size": 128, "lr": 1e-3},
    "augment": {"shift": 3, "noise": 0.08, "blur_prob": 0.3},
    "val_images": 1000,
    "calibration_images": 4000,
}


def render_pool(cfg: ShapesConfig, split: str, num: int, progress: bool = True) -> tuple[torch.Tensor, list, list]:
    """Render `num` images of `split`: uint8 (N, 3, S, S), attributes, captions."""
    imgs = np.empty((num, cfg.size, cfg.size, 3), dtype=np.uint8)
    attrs, caps = [], []
    for i in tqdm(range(num), desc=f"render {split}", disable=not progress, unit="img"):
        s = make_sample(cfg, split, i)
        imgs[i] = np.asarray(s.image)
        attrs.append(s.attributes)
        caps.append(s.captions)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), attrs, caps


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(127.5).sub(1.0)  # uint8 -> [-1, 1]


def augment(x: torch.Tensor, aug: dict, gen: torch.Generator) -> torch.Tensor:
    """Shift by up to `shift` px (edge padding), maybe blur, add Gaussian noise: (B, 3, S, S) in [-1, 1]."""
    B, _, S, _ = x.shape
    s = int(aug.get("shift", 0))
    if s:
        pad = F.pad(x, (s, s, s, s), mode="replicate")
        dx = torch.randint(0, 2 * s + 1, (B,), generator=gen)
        dy = torch.randint(0, 2 * s + 1, (B,), generator=gen)
        x = torch.stack([pad[i, :, dy[i] : dy[i] + S, dx[i] : dx[i] + S] for i in range(B)])
    if aug.get("blur_prob", 0):
        blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        w = (torch.rand(B, 1, 1, 1, generator=gen) < aug["blur_prob"]).float() * torch.rand(B, 1, 1, 1, generator=gen)
        x = x * (1 - w) + blur * w
    if aug.get("noise", 0):
        sigma = torch.rand(B, 1, 1, 1, generator=gen) * aug["noise"]
        x = x + sigma * torch.randn(x.shape, generator=gen)
    return x.clamp(-1, 1)


def _cosine_lr(opt, step: int, total: int, base: float, warmup: int = 200) -> None:
    lr = base * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    for g in opt.param_groups:
        g["lr"] = lr


def train_recognizer(net: AttributeRecognizer, rc: dict, recipe: dict, val, log) -> dict:
    shapes_cfg = ShapesConfig(size=recipe["resolution"], seed=recipe["dataset_seed"])
    imgs, attrs, _ = render_pool(shapes_cfg, "train", rc["num_images"])
    targets = cell_targets(attrs)
    gen = torch.Generator().manual_seed(recipe["seed"])
    opt = torch.optim.AdamW(net.parameters(), lr=rc["lr"], weight_decay=1e-4)
    steps_per_epoch = len(imgs) // rc["batch_size"]
    total = steps_per_epoch * rc["epochs"]
    step, t0 = 0, time.time()
    bar = tqdm(total=total, desc="recognizer", unit="step")
    for epoch in range(rc["epochs"]):
        net.train()
        perm = torch.randperm(len(imgs), generator=gen)
        for b in range(steps_per_epoch):
            # Fetch training data.
            idx = perm[b * rc["batch_size"] : (b + 1) * rc["batch_size"]]
            x = augment(to_float(imgs[idx]), recipe["augment"], gen)
            # Update the recognizer.
            _cosine_lr(opt, step, total, rc["lr"])
            loss = cell_loss(net(x), {k: v[idx] for k, v in targets.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        # Measure on held-out real images.
        m = validate_recognizer(net, val)
        if epoch == rc["epochs"] - 1:
            net.eval()
            calibrate_features(net, to_float(imgs[: recipe["calibration_images"]]))
        log({"net": "recognizer", "epoch": epoch + 1, "step": step, "loss": loss.item(), "time_s": time.time() - t0,
             **m})  # fmt: skip
    bar.close()
    return {"train_time_s": round(time.time() - t0, 1), **m}


@torch.no_grad()
def validate_recognizer(net: AttributeRecognizer, val) -> dict:
    """Per-cell accuracy of occupancy and of shape/colour/size on occupied cells, and whole-image exactness."""
    net.eval()
    imgs, attrs, _ = val
    t = cell_targets(attrs)
    preds = [decode_cells(net(to_float(imgs[i : i + 256]))) for i in range(0, len(imgs), 256)]
    occ = torch.cat([p.occupancy for p in preds]) > 0.5
    out = {"val_occupancy": (occ == t["occupancy"].bool()).float().mean().item()}
    exact = (occ == t["occupancy"].bool()).all(1)
    m = t["occupancy"].bool()
    for k in ("shape", "color", "size"):
        pk = torch.cat([getattr(p, k) for p in preds])
        out[f"val_{k}"] = (pk[m] == t[k][m]).float().mean().item()
        exact &= ((pk == t[k]) | ~m).all(1)
    out["val_exact_image"] = exact.float().mean().item()
    return {k: round(v, 5) for k, v in out.items()}


def dataset_pool(path: str, size: int, num: int) -> tuple[torch.Tensor, list]:
    """The first `num` images (uint8 (N, 3, S, S)) and caption lists of a dataset folder's train split."""
    from t2i.data.dataset import load_dataset

    ds = load_dataset(path, split="train", size=size, length=num)
    exs = [ds[i] for i in tqdm(range(len(ds)), desc=f"read {path}", unit="img")]
    imgs = torch.stack([((e.image + 1) * 127.5).round().clamp(0, 255).byte() for e in exs])
    return imgs, [list(e.captions) for e in exs]


def train_matcher(net: ImageTextMatcher, mc: dict, recipe: dict, val, log, pool=None) -> dict:
    from t2i.metrics.core import _text_encoder_cached

    if pool is None:
        shapes_cfg = ShapesConfig(size=recipe["resolution"], seed=recipe["dataset_seed"])
        imgs, _, caps = render_pool(shapes_cfg, "train", mc["num_images"])
    else:
        imgs, caps = pool
    enc = _text_encoder_cached(int(recipe.get("text_max_length", 32)))  # MiniLM + the on-disk feature cache
    counts = torch.tensor([len(c) for c in caps])  # captions per image (fixed for Shapes, varies elsewhere)
    starts = torch.cumsum(counts, 0) - counts
    sent = sentence_features(enc, [c for cs in caps for c in cs])  # (sum counts, 384)
    val_imgs, _, val_caps = val
    val_sent = sentence_features(enc, [c[0] for c in val_caps])  # (V, 384)
    gen = torch.Generator().manual_seed(recipe["seed"] + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=mc["lr"], weight_decay=1e-4)
    steps_per_epoch = len(imgs) // mc["batch_size"]
    total = steps_per_epoch * mc["epochs"]
    step, t0 = 0, time.time()
    bar = tqdm(total=total, desc="matcher", unit="step")
    for epoch in range(mc["epochs"]):
        net.train()
        perm = torch.randperm(len(imgs), generator=gen)
        for b in range(steps_per_epoch):
            # Fetch training data: each image with one of its captions, picked at random.
            idx = perm[b * mc["batch_size"] : (b + 1) * mc["batch_size"]]
            x = augment(to_float(imgs[idx]), recipe["augment"], gen)
            pick = (torch.rand(len(idx), generator=gen) * counts[idx]).long()
            s = sent[starts[idx] + pick]
            # Update the matcher (symmetric InfoNCE).
            _cosine_lr(opt, step, total, mc["lr"])
            loss = net(x, s)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        m = validate_matcher(net, val_imgs, val_sent)
        log({"net": "matcher", "epoch": epoch + 1, "step": step, "loss": loss.item(), "time_s": time.time() - t0, **m})
    bar.close()
    return {"train_time_s": round(time.time() - t0, 1), **m}


@torch.no_grad()
def validate_matcher(net: ImageTextMatcher, imgs: torch.Tensor, sent: torch.Tensor, pool: int = 100) -> dict:
    """Retrieval R@1 among `pool` captions (the true one + pool-1 others from the validation set)."""
    net.eval()
    im = torch.cat([net.embed_images(to_float(imgs[i : i + 256])) for i in range(0, len(imgs), 256)])
    tx = net.embed_text(sent)
    hits = 0
    pool = min(pool, len(im))
    n = (len(im) // pool) * pool
    for i in range(0, n, pool):
        sims = im[i : i + pool] @ tx[i : i + pool].t()
        hits += (sims.argmax(1) == torch.arange(pool)).sum().item()
    return {"val_r1_in_block": round(hits / max(n, 1), 5)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="recipe YAML, e.g. configs/t2i/shapes_evaluator.yaml")
    ap.add_argument("--out", default=None, help="evaluator folder (default: the recipe's `out`)")
    ap.add_argument("--only", choices=["recognizer", "matcher", "calibrate"], default=None,
                    help="train one network (the other is taken from --out), or only recompute the recognizer's "
                    "feature standardisation")  # fmt: skip
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    recipe = {**DEFAULTS, **(yaml.safe_load(Path(args.config).read_text()) or {})}
    for k in ("recognizer", "matcher", "augment"):
        recipe[k] = {**DEFAULTS[k], **(recipe.get(k) or {})}
    out = Path(args.out or recipe["out"])
    torch.manual_seed(recipe["seed"])
    torch.set_num_threads(int(recipe["threads"]))

    shapes = str(recipe.get("dataset", "shapes")) == "shapes"
    cfg = EvaluatorConfig(resolution=recipe["resolution"], recipe=recipe, dataset=str(recipe.get("dataset", "shapes")),
                          feature_network="recognizer" if shapes else "matcher",
                          **recipe.get("architecture", {}))  # fmt: skip
    if args.only and (out / "config.json").is_file():
        ev = load_evaluator(out)
        ev.config.recipe = recipe
        ev.recognizer.requires_grad_(True)
        ev.matcher.requires_grad_(True)
    else:
        ev = Evaluator(cfg, AttributeRecognizer(cfg), ImageTextMatcher(cfg))
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.jsonl"

    def log(row):
        print(json.dumps(row), flush=True)
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    pool = None
    if shapes:
        val = render_pool(ShapesConfig(size=recipe["resolution"], seed=recipe["dataset_seed"]), "test",
                          recipe["val_images"])  # fmt: skip
    else:
        # A dataset without attributes: no recognizer; the matcher is trained on its image-caption pairs and its
        # image encoder is the FID/KID feature network. The last images of the train split are held out.
        imgs, caps = dataset_pool(recipe["dataset"], recipe["resolution"],
                                  recipe["matcher"]["num_images"] + recipe["val_images"])  # fmt: skip
        nv = max(1, min(recipe["val_images"], len(imgs) // 5))
        val, pool = (imgs[-nv:], None, caps[-nv:]), (imgs[:-nv], caps[:-nv])
        if args.only in ("recognizer",):
            raise SystemExit(f"dataset {recipe['dataset']} has no attributes: there is no recognizer to train")
    if shapes and args.only in (None, "recognizer"):
        ev.config.metrics["recognizer"] = train_recognizer(ev.recognizer, recipe["recognizer"], recipe, val, log)
        ev.recognizer.eval().requires_grad_(False)
        save_evaluator(ev, out)  # save after each network, so a later failure keeps the first
    if args.only == "calibrate" and shapes:
        shapes_cfg = ShapesConfig(size=recipe["resolution"], seed=recipe["dataset_seed"])
        imgs, _, _ = render_pool(shapes_cfg, "train", recipe["calibration_images"])
        calibrate_features(ev.recognizer, to_float(imgs))
        save_evaluator(ev, out)
    if args.only in (None, "matcher"):
        ev.config.metrics["matcher"] = train_matcher(ev.matcher, recipe["matcher"], recipe, val, log, pool)
        if recipe.get("matcher_finetune"):  # a second, gentler stage with more negatives per step
            ft = {**recipe["matcher"], **recipe["matcher_finetune"]}
            ev.config.metrics["matcher_finetune"] = train_matcher(
                ev.matcher, ft, recipe, val, lambda row: log({**row, "net": "matcher_finetune"}), pool
            )
        ev.matcher.eval().requires_grad_(False)
        if not shapes:
            calibrate_features(ev.matcher, to_float(pool[0][: recipe["calibration_images"]]))
        save_evaluator(ev, out)
    print(json.dumps(asdict(ev.config)["metrics"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
