"""The one training loop (`t2i train CONFIG [key=value ...]`), shared by every family.

A recipe (configs/t2i/*.yaml) names a `family`, its `model` config, the `data` and the `train` settings. A family
turns them into modules, optimizers and *phases* (StyleGAN2-ADA style: D-step, G-step, each with its optimizer,
loss function and interval); the loop below only fetches data, runs the phases, updates the EMA, snapshots,
samples and evaluates. accelerate handles devices, DDP (`accelerate launch` / `torchrun`), mixed precision and
gradient accumulation. Checkpoints are safetensors + JSON (optimizer states via torch.load(weights_only=True)),
written to a tmp folder and renamed into place, so a killed run resumes from its last complete snapshot.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from t2i import losses as L

RUNS_DIR = Path("runs")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; the message names the step and the loss."""


@dataclass
class TrainConfig:
    """Loop and optimisation settings (the `train:` section of a recipe)."""

    batch_size: int = 32  # per process, per micro-step
    max_steps: int = 10_000  # optimizer steps
    grad_accum: int = 1
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (bf16 on a GPU)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: list = field(default_factory=lambda: [0.5, 0.999])
    gan_loss: str = "bce"  # "bce" (papers) | "hinge" (DF-GAN; use with ma_gp_weight > 0)
    ma_gp_weight: float = 0.0  # DF-GAN's k (2); 0 disables the matching-aware gradient penalty
    ma_gp_power: float = 6.0
    uncond_weight: float = 1.0  # weight of the unconditional real/fake terms
    kl_weight: float = 1.0  # conditioning augmentation KL (StackGAN: 2, AttnGAN: 1)
    lambda_damsm: float = 0.0  # AttnGAN's DAMSM weight (CUB: 5, COCO: 50); needs model.damsm_checkpoint
    mismatch: str = "batch"  # the D's mismatched captions: "batch" (another image's caption in the batch),
    # "near_miss" (Shapes: the image's own scene with one attribute changed, re-captioned; t2i.data.shapes.near_miss)
    # or "mixed" (each image's at random, half and half, seeded by step)
    # XMC-GAN's image-sentence contrastive loss (Zhang et al. 2021): each D gets an image and a sentence head; D learns
    # to pick a real image's caption out of the batch and G to make its image pick its own caption (0: off)
    contrastive_weight: float = 0.0
    contrastive_tau: float = 0.1
    contrastive_dim: int = 256
    # Shapes: this fraction of each batch's images also gets a near miss of its own caption (one shape, colour, size,
    # position changed or two objects swapped) as an extra negative in the contrastive softmax, D's and G's alike
    contrastive_near_miss: float = 0.0
    # This fraction of the images whose caption names a side also gets its mirrored caption (left <-> right,
    # t2i.text.mirror_caption) as that extra negative: for GANs that draw "top left" and "top right" in one place
    contrastive_mirror: float = 0.0
    # XMC-GAN's image-image term, with D's image head as the encoder: G's image and the real image of its caption are
    # the positive pair, the batch's other real images the negatives (G phase only; needs contrastive_weight > 0)
    contrastive_image_weight: float = 0.0
    # A generator with a layout stage (model.layout_channels > 0) is also judged by a conditional PatchGAN over
    # [image, painted map] per stage (t2i.nn.LayoutPatchD): the weight of its terms in D's and G's losses
    layout_d_weight: float = 1.0
    # ... and by Obj-GAN's object-wise discriminator (t2i.nn.ObjectD) on a crop of every object's box against the words
    # that name it (0: off; needs the layout stage)
    object_d_weight: float = 0.0
    object_crop: int = 32  # the crops' size in pixels
    d_interval: int = 1  # run the D phase every N steps
    g_interval: int = 1
    ema_decay: float = 0.999
    init_from: str | None = None  # start the trained network (GANs: G, diffusion: the UNet, VQ prior: the prior)
    # and its EMA from an export, bundle or run folder (fine-tuning / going on from a bundle); optimizers start fresh
    seed: int = 0
    num_threads: int = 0  # torch CPU threads (0: leave torch's default)
    on_nonfinite: str = "stop"  # "stop" | "skip" the step
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 500  # 0: no sample grids
    eval_every: int = 0  # 0: never; else t2i.metrics.evaluate every N steps (Shapes)
    eval_metrics: list = field(default_factory=lambda: ["attribute_accuracy"])
    eval_num_samples: int = 200
    export_dtype: str = "float16"
    max_minutes: float = 0.0  # 0: no limit; else stop cleanly (checkpoint, export, samples) after this much wall time
    # of this invocation - for a lease or a batch-queue slot; resume goes on from there


@dataclass
class DataConfig:
    """What to train on (the `data:` section)."""

    dataset: str = "shapes"  # "shapes" or a dataset folder (imagefolder / CUB / COCO layout)
    split: str = "train"
    size: int = 64
    length: int | None = 10_000  # Shapes: a finite pool whose captions are pre-encoded (t2i data encode)
    seed: int = 0
    text_encoder: str | None = None  # local HF folder or hub id; None = bundled MiniLM
    max_length: int = 32
    text_layer: int = -1  # hidden state the word features come from (-1 last; see t2i.text.TextEncoder)
    cache_images: bool = True  # keep decoded images in memory as uint8 (Shapes 10k x 64^2: 120 MB; off for COCO)
    sample_captions: list = field(default_factory=list)  # fixed captions of the sample grid; default: test captions
    # Shapes only: the share of two-object scenes in the training pool (None: the generator's 0.5). Evaluation
    # always reads the standard test split, so a run trained on a different mix is scored like every other.
    two_object_prob: float | None = None

    def shapes_kwargs(self) -> dict:
        if self.two_object_prob is None:
            return {}
        if self.dataset.split(":")[0] != "shapes":
            raise ValueError(f"data.two_object_prob is for the shapes dataset, not {self.dataset!r}")
        if not 0.0 <= self.two_object_prob <= 1.0:
            raise ValueError(f"data.two_object_prob must be in [0, 1], got {self.two_object_prob}")
        return {"two_object_prob": float(self.two_object_prob)}


# ---------------------------------------------------------------------------------------------------------------
# Recipes: YAML + key=value overrides -> dataclasses.


def _from_dict(cls, d: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    return cls(**d)


def apply_overrides(recipe: dict, overrides: list[str]) -> dict:
    """`train.lr_g=1e-4 model.ngf=16 name=x` -> nested dict updates (values parsed as YAML)."""
    for ov in overrides:
        if "=" not in ov:
            raise ValueError(f"override {ov!r} is not KEY=VALUE (e.g. train.batch_size=16)")
        key, val = ov.split("=", 1)
        node, parts = recipe, key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {ov!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(val)
    return recipe


def _parse_value(val: str):
    """YAML, plus what YAML 1.1 leaves as strings but a person means as numbers: 2e-4, nan, inf."""
    v = yaml.safe_load(val)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no recipe at {p}")
    recipe = yaml.safe_load(p.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{p}: a recipe must be a YAML mapping")
    recipe = apply_overrides(recipe, overrides or [])
    recipe.setdefault("name", p.stem)
    for k in ("family", "model"):
        if k not in recipe:
            raise ValueError(f"{p}: recipe needs a {k!r} key")
    unknown = sorted(set(recipe) - {"name", "family", "model", "data", "train"})
    if unknown:
        raise ValueError(f"{p}: unknown top-level key(s) {unknown}")
    return recipe


# ---------------------------------------------------------------------------------------------------------------
# Data: images (cached as uint8), one random caption per image per step, features from the cached text encoder.


class Batches:
    """Deterministic batches: step s, rank r -> the same images and captions on every run (so resume is exact)."""

    def __init__(self, cfg: DataConfig, batch_size: int, rank: int, world: int, seed: int):
        from t2i.data.dataset import load_dataset

        self.ds = load_dataset(cfg.dataset, cfg.split, cfg.size, cfg.length, cfg.seed, **cfg.shapes_kwargs())
        self.n, self.bs, self.rank, self.world, self.seed = len(self.ds), batch_size, rank, world, seed
        if self.n < batch_size * world:
            raise ValueError(f"dataset has {self.n} images, fewer than one global batch ({batch_size * world})")
        self._images: dict[int, tuple] = {}
        self.cache_images = cfg.cache_images
        self._perm_epoch, self._perm = -1, None

    def _example(self, i: int) -> tuple[torch.Tensor, list[str], dict | None]:
        """(image (3, S, S) in [-1, 1], captions, attributes); decoded/drawn once when cache_images."""
        if i in self._images:
            img, caps, attrs = self._images[i]
            return img.float() / 127.5 - 1, caps, attrs
        ex = self.ds[i]
        if self.cache_images:  # as uint8: 10k 64x64 images = 120 MB
            self._images[i] = (((ex.image + 1) * 127.5).round().to(torch.uint8), ex.captions, ex.attributes)
        return ex.image, ex.captions, ex.attributes

    def get(self, micro_step: int) -> dict:
        per_epoch = self.n // (self.bs * self.world)
        epoch, pos = divmod(micro_step, per_epoch)
        if epoch != self._perm_epoch:
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
            self._perm_epoch = epoch
        start = (pos * self.world + self.rank) * self.bs
        idx = self._perm[start : start + self.bs].tolist()
        rng = random.Random(f"{self.seed}-{micro_step}-{self.rank}")  # str seeds are hashed deterministically
        images, captions, attrs = [], [], []
        for i in idx:
            img, caps, attr = self._example(i)
            images.append(img)
            captions.append(rng.choice(caps))
            attrs.append(attr)
        return {"image": torch.stack(images), "captions": captions, "attributes": attrs, "index": idx}


def _describe(attrs: dict | None, caption: str):
    """What a caption pins down (for mismatch selection): Shapes attributes, else the caption itself."""
    if attrs is None:
        return caption
    objs = tuple((o["shape"], o["color"], o["size"]) + ((o["position"],) if len(attrs["objects"]) == 1 else ())
                 for o in attrs["objects"])  # fmt: skip
    return (objs, attrs.get("relation"))


def mismatch_index(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (mis (B,) index of a caption that does NOT describe image i, same (B, B) bool 'describes the same')."""
    keys = [_describe(a, c) for a, c in zip(batch["attributes"], batch["captions"])]
    B = len(keys)
    same = torch.tensor([[keys[i] == keys[j] for j in range(B)] for i in range(B)])
    mis = []
    for i in range(B):
        j = next(((i + s) % B for s in range(1, B) if not same[i, (i + s) % B]), (i + 1) % B)
        mis.append(j)
    return torch.tensor(mis), same


# ---------------------------------------------------------------------------------------------------------------
# Families: modules + optimizers + phases.


@dataclass
class Phase:
    """One update: `fn(batch, step) -> {loss name: tensor}`; 'loss' is backpropagated into `optimizer`."""

    name: str
    fn: object
    optimizer: str
    interval: int = 1
    trains: list = field(default_factory=list)  # module names whose requires_grad is on during this phase


class GANFamily:
    """StackGAN / AttnGAN: a D phase (matching-aware + optional MA-GP) and a G phase (adversarial + KL + DAMSM)."""

    def __init__(self, family: str, model_cfg: dict, tcfg: TrainConfig):
        from torch.optim.swa_utils import AveragedModel

        c_dim = tcfg.contrastive_dim if tcfg.contrastive_weight > 0 else 0
        if family == "stackgan":
            from t2i.models.stackgan import StackGANConfig, build_stackgan

            self.cfg = _from_dict(StackGANConfig, model_cfg, "model")
            G, D = build_stackgan(self.cfg, c_dim)
            if self.cfg.train_stage == "stage2":
                self._load_stage1(G)
        else:
            from t2i.models.attngan import AttnGANConfig, build_attngan

            self.cfg = _from_dict(AttnGANConfig, model_cfg, "model")
            G, D = build_attngan(self.cfg, c_dim)
        self.family, self.t = family, tcfg
        L._check(tcfg.gan_loss)
        pool = None
        if self.cfg.word_pool:
            from t2i.nn import WordPool

            pool = WordPool(self.cfg.text_dim)
            if tcfg.mismatch != "batch" or tcfg.contrastive_near_miss > 0:
                raise ValueError("model.word_pool reads the words of every caption D sees; near-miss captions "
                                 "(train.mismatch near_miss/mixed, train.contrastive_near_miss) are not supported "
                                 "with it: use train.mismatch=batch and train.contrastive_mirror")  # fmt: skip
        layout_d = None
        if self.cfg.layout_channels > 0:
            from t2i.nn import LayoutPatchD

            layout_d = torch.nn.ModuleList(LayoutPatchD(r, self.cfg.layout_channels, self.cfg.ndf)
                                           for r in (d.resolution for d in D))  # fmt: skip
        object_d = None
        if tcfg.object_d_weight > 0:
            if layout_d is None:
                raise ValueError("train.object_d_weight > 0 needs the layout stage (model.layout_channels > 0)")
            from t2i.nn import ObjectD

            object_d = ObjectD(self.cfg.text_dim, self.cfg.ndf, tcfg.object_crop)
        self.modules = {"G": G, "D": MultiStageD(D, pool, layout_d, object_d)}
        self.optimizers = {
            "G": torch.optim.Adam(G.trainable_parameters(), lr=tcfg.lr_g, betas=tuple(tcfg.betas)),
            "D": torch.optim.Adam(self.modules["D"].parameters(), lr=tcfg.lr_d, betas=tuple(tcfg.betas)),
        }
        if tcfg.init_from:
            self._init_generator(G, tcfg.init_from)
        self._grounding_cache: dict = {}
        if G.layout_net is not None:
            self._init_layout_net(G, tcfg.init_from)
        elif self.cfg.layout_from:
            raise ValueError("model.layout_from needs the layout stage (model.layout_channels > 0)")
        self.ema = AveragedModel(G, multi_avg_fn=ema_with_warmup(tcfg.ema_decay), use_buffers=True)
        self.ema.requires_grad_(False)
        self.damsm = None
        if tcfg.lambda_damsm > 0:
            if family != "attngan" or not getattr(self.cfg, "damsm_checkpoint", None):
                raise ValueError("train.lambda_damsm > 0 needs family attngan and model.damsm_checkpoint")
            self.damsm = load_damsm(self.cfg.damsm_checkpoint)
        self.phases = [
            Phase("D", self.d_step, "D", tcfg.d_interval, ["D"]),
            Phase("G", self.g_step, "G", tcfg.g_interval, ["G"]),
        ]

    def _init_generator(self, G, path):
        """Copy an exported generator of the same family and architecture into G (D starts fresh). A generator
        without a layout stage goes into a recipe with one: the layout stage's weights are new (the injections start
        at zero, the LayoutNet comes from model.layout_from)."""
        from t2i.pipelines import resolve_checkpoint

        src = resolve_checkpoint(path)
        cfg = json.loads((src / "config.json").read_text())
        mine = json.loads(json.dumps(dataclasses.asdict(self.cfg)))
        skip = ("damsm_checkpoint", "stage1_checkpoint", "train_stage", "ca_noise", "layout_from")
        theirs = cfg.get("model", {})
        grown = not theirs.get("layout_channels", 0) and mine["layout_channels"] > 0  # a layout stage added
        skip += tuple(k for k in mine if k.startswith("layout_")) if grown else ()
        diff = sorted(k for k in mine if k not in skip and k in theirs and theirs[k] != mine[k])
        if cfg.get("family") != self.family or diff:
            raise ValueError(f"train.init_from={path}: a {cfg.get('family')} generator whose model differs from "
                             f"this recipe's {self.family} in {diff or 'family'}")  # fmt: skip
        state = load_file(str(src / "generator.safetensors"))
        missing, unexpected = G.load_state_dict({k: v.float() if v.is_floating_point() else v
                                                 for k, v in state.items()}, strict=False)  # fmt: skip
        if grown:
            missing = [k for k in missing if not (k.startswith("layout_net.") or ".lay." in k)]
        if missing or unexpected:
            raise ValueError(f"train.init_from={path}: its generator weights do not fit this recipe's (missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]})")  # fmt: skip
        self._grown_layout = grown

    def _init_layout_net(self, G, init_from):
        """The layout stage's LayoutNet: model.layout_from's (an export with a layout_net/ folder, such as the
        diffusion_layout bundle), else the one init_from's generator holds. Its box predictor stays frozen."""
        from t2i.models.diffusion import LayoutNet
        from t2i.pipelines import resolve_checkpoint

        src = self.cfg.layout_from
        if src:
            root = Path(src)
            if not (root / "layout_net").is_dir() and root.is_dir():
                try:
                    root = resolve_checkpoint(src)  # a run folder: its export
                except FileNotFoundError:
                    pass
            folder = root / "layout_net"
            if not (folder / "config.json").is_file():
                raise ValueError(f"model.layout_from={src}: no layout_net/ folder there (a layout export?)")
            net = LayoutNet.from_pretrained(folder)
            theirs = {k: v for k, v in dict(net.config).items() if not k.startswith("_")}
            mine = {k: v for k, v in dict(G.layout_net.config).items() if not k.startswith("_")}
            if theirs != mine:
                diff = sorted(k for k in mine if theirs.get(k) != mine[k])
                raise ValueError(
                    f"model.layout_from={src}: its LayoutNet differs from this recipe's in {diff} "
                    "(set model.layout_channels / layout_width / layout_layers / layout_contextual)"
                )
            G.layout_net.load_state_dict(net.state_dict())
        elif not init_from or getattr(self, "_grown_layout", False):
            raise ValueError(
                "model.layout_channels > 0 needs a trained LayoutNet: set model.layout_from (e.g. "
                "checkpoints/shapes64/diffusion_layout) or train.init_from a generator with a layout stage"
            )
        for q in self._frozen(G):  # the box predictor; the painting projections learn with G
            q.requires_grad_(False)

    @staticmethod
    def _frozen(G) -> list:
        """G's parameters that stay fixed while G trains (not in its optimizer): a frozen stage I (train_stage
        stage2), a layout stage's box predictor."""
        mine = {id(q) for q in G.trainable_parameters()}
        return [q for q in G.parameters() if id(q) not in mine]

    def frozen_parameters(self) -> list:
        return self._frozen(self.acc.unwrap_model(self.p["G"]))

    def _load_stage1(self, G):
        p = self.cfg.stage1_checkpoint
        if not p:
            raise ValueError("model.train_stage 'stage2' needs model.stage1_checkpoint (a stage-I export or run)")
        from t2i.pipelines import resolve_checkpoint

        state = load_file(str(resolve_checkpoint(p) / "generator.safetensors"))
        s1 = {k[len("stage1.") :]: v.float() for k, v in state.items() if k.startswith("stage1.")}
        G.stage1.load_state_dict(s1)
        G.stage1.requires_grad_(False).eval()

    def bind(self, accelerator, encoder, prepared: dict):
        self.acc, self.encoder, self.p = accelerator, encoder, prepared
        if self.damsm is not None:
            self.damsm.to(accelerator.device)

    def _features(self, batch):
        f = self.encoder.encode(batch["captions"]).to(self.acc.device)
        mis, same = mismatch_index(batch)
        return f, mis.to(self.acc.device), same.to(self.acc.device)

    def _noise(self, B, step, salt):
        # Integer tuples hash the same in every process (strings would not): salt is 0 (D phase) or 1 (G phase).
        g = step_generator(self.t.seed, step, self.acc.process_index, salt)
        return torch.randn(B, self.cfg.z_dim, generator=g).to(self.acc.device), g

    def _g_forward(self, G, batch, f, step, salt, layout=None):
        z, g = self._noise(f.sentence.shape[0], step, salt)
        ca_gen = torch.Generator(device=self.acc.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        return G(z, f.sentence, f.words, f.mask, generator=ca_gen, layout=layout)

    def _grounding(self, batch, f):
        """(boxes (B, T, 4), valid (B, T)) of every object word of the batch's captions (grounding_targets), worked
        out once per batch: the layout map and the object discriminator of both phases read the same."""
        if "_grounding" not in batch:
            from t2i.models.diffusion import grounding_targets

            if any(a is None for a in batch["attributes"]):
                raise ValueError("a generator with a layout stage trains on the scenes' object boxes: this dataset "
                                 "has no per-image attributes (the Shapes dataset has)")  # fmt: skip
            batch["_grounding"] = grounding_targets(self.encoder.tokenizer, batch["captions"], batch["attributes"],
                                                    f.words.shape[1], self.encoder.max_length,
                                                    self._grounding_cache)  # fmt: skip
        return batch["_grounding"]

    def _objects(self, batch, f):
        """The batch's objects for the object discriminator: (image rows (N,), boxes (N, 4), the mean word feature of
        the tokens that name each (N, D)), from the same grounding as the layout map; or None when it is off (or no
        object is named)."""
        if self.t.object_d_weight <= 0:
            return None
        boxes, valid = self._grounding(batch, f)
        rows, out, words = [], [], []
        for b in range(len(boxes)):
            seen: dict = {}
            for t in valid[b].nonzero().flatten().tolist():
                seen.setdefault(tuple(boxes[b, t].tolist()), []).append(t)
            for box, toks in seen.items():
                rows.append(b)
                out.append(box)
                words.append(f.words[b, toks].float().mean(0))
        if not rows:
            return None
        dev = f.words.device
        return torch.tensor(rows, device=dev), torch.tensor(out, device=dev), torch.stack(words)

    def _true_layout(self, G, batch, f):
        """The scenes' true boxes painted by G's LayoutNet at G's resolution (through its painting projections, so
        G's loss trains them; the frozen predictor only gives its state at each word), or None without a layout
        stage."""
        if G.layout_net is None:
            return None
        boxes, valid = self._grounding(batch, f)
        boxes, valid = boxes.to(f.words.device), valid.to(f.words.device)
        state = None
        if G.layout_net.hproj is not None:
            with torch.no_grad():
                state = G.layout_net.predict_with_state(f.words, f.mask)[2]
        r = self.cfg.resolution
        return G.layout_net.paint(f.words, boxes, valid.float(), r, r, state=state)

    def _near_miss_sentences(self, batch, step, rows: list[int] | None = None) -> torch.Tensor:
        """(B, D) sentence features of captions that get exactly one thing about each image wrong (train.mismatch=
        near_miss), standardised like D's input when the model uses sentence_norm; (len(rows), D) for those images
        only when rows is given (mixed: the other half is never encoded)."""
        import numpy as np

        from t2i.data.shapes import Scene, caption_scene, near_miss

        if any(a is None for a in batch["attributes"]):
            raise ValueError("train.mismatch=near_miss needs per-image attributes (the Shapes dataset); this dataset "
                             "has none: use train.mismatch=batch")  # fmt: skip
        rng = np.random.default_rng([self.t.seed, step, self.acc.process_index, 11])
        attrs = batch["attributes"] if rows is None else [batch["attributes"][i] for i in rows]
        caps = [caption_scene(near_miss(Scene.from_attributes(a), rng), rng, 1)[0] for a in attrs]
        return self._standardised(self.encoder.encode(caps, cache=False).sentence.to(self.acc.device))

    def _standardised(self, s: torch.Tensor) -> torch.Tensor:
        """A sentence feature at the scale D's stages read it (they standardise it themselves with sentence_norm)."""
        return torch.nn.functional.layer_norm(s, s.shape[-1:]) if self.cfg.sentence_norm else s

    def _contrastive_near_misses(self, batch, step):
        """(hard-negative sentences (R, D), their rows (R,)) for train.contrastive_near_miss (near misses) or
        train.contrastive_mirror (mirrored captions, only for captions that name a side), or (None, None). The rows
        and captions are seeded by step; they are kept in the batch, so the D and G phases of a micro-step share one
        encoding and each micro-batch of a gradient-accumulation step gets its own."""
        frac = self.t.contrastive_near_miss + self.t.contrastive_mirror  # (at most one of them is set)
        if self.t.contrastive_weight <= 0 or frac <= 0:
            return None, None
        if "_contrastive_near_misses" not in batch:
            caps = batch["captions"]
            g = step_generator(self.t.seed, step, self.acc.process_index, 13)
            pick = torch.rand(len(caps), generator=g) < frac
            if self.t.contrastive_mirror > 0:
                from t2i.text import mirror_caption

                mirrored = [mirror_caption(c) for c in caps]
                pick &= torch.tensor([m != c for m, c in zip(mirrored, caps)], dtype=torch.bool)
            rows = pick.nonzero().flatten()
            hard = None
            if len(rows) and self.t.contrastive_mirror > 0:  # a fixed set of captions: worth the encoder's cache
                hard = self.encoder.encode([mirrored[i] for i in rows.tolist()]).to(self.acc.device)  # TextFeatures
            elif len(rows):
                hard = self._near_miss_sentences(batch, step, rows.tolist())
            batch["_contrastive_near_misses"] = (hard, rows.to(self.acc.device) if hard is not None else None)
        return batch["_contrastive_near_misses"]

    def _hard_text(self, hard, D):
        """The hard negatives as D's stages read them: near misses come as sentences (standardised), mirrored captions
        as TextFeatures, through D's word pooling when it has one."""
        if hard is None or torch.is_tensor(hard):
            return hard
        return self._standardised(D.text(hard.sentence, hard.words, hard.mask))

    def d_step(self, batch, step):
        f, mis, same = self._features(batch)
        real = batch["image"].to(self.acc.device)
        B = real.shape[0]
        G = self.acc.unwrap_model(self.p["G"])
        with torch.no_grad():
            lay = self._true_layout(G, batch, f)
            fake = self._g_forward(G, batch, f, step, 0, lay).images
        n_d = self.p["D"].module.n if hasattr(self.p["D"], "module") else self.p["D"].n
        fake = fake[len(fake) - n_d :]
        from t2i.models.stackgan import downsample_to

        gp = self.t.ma_gp_weight > 0
        Dm = self.acc.unwrap_model(self.p["D"])
        # D standardises the sentence itself (idempotent); hand it over standardised so MA-GP's gradient is taken at
        # the scale D reads. Through the LayerNorm, the unit-norm feature's gradient is ~20x larger, and the 6th-power
        # penalty on it kept D from reading the text at all.
        sentence = self._standardised(Dm.text(f.sentence, f.words, f.mask))
        if self.t.mismatch == "near_miss":
            wrong = self._near_miss_sentences(batch, step)
        else:
            wrong = sentence[mis]
        if self.t.mismatch == "mixed":  # half the images (seeded per step) get a near miss instead
            g = step_generator(self.t.seed, step, self.acc.process_index, 12)
            rows = (torch.rand(B, generator=g) < 0.5).nonzero().flatten().tolist()
            if rows:
                wrong = wrong.index_copy(0, torch.tensor(rows, device=wrong.device),
                                         self._near_miss_sentences(batch, step, rows))  # fmt: skip
        imgs, sents, leaves = [], [], []
        for x in fake:
            r = downsample_to(real, x.shape[-1]).detach().requires_grad_(gp)
            # With word pooling the sentence comes out of D's pool: MA-GP differentiates at it, and the pool learns
            s = sentence if Dm.pool is not None else sentence.detach().clone().requires_grad_(gp)
            leaves.append((r, s))
            imgs.append(torch.cat([r, r, x.detach()]))
            sents.append(torch.cat([s, wrong, sentence]))
        con = self.t.contrastive_weight > 0
        hard, hard_rows = self._contrastive_near_misses(batch, step)
        hard = self._hard_text(hard, Dm)
        out = {"d_adv": 0.0, "d_gp": 0.0} | ({"d_con": 0.0} if con else {})
        if lay is None:
            outs = self.p["D"](imgs, sents, con)  # [(cond (3B,), uncond (3B,) | None[, (img emb, text emb) (3B, E)])]
        else:  # the layout PatchGANs: [real, real, fake] on [true map, another image's map, true map]
            objs = self._objects(batch, f)
            if objs is None:
                outs, patches = self.p["D"](imgs, sents, con, torch.cat([lay, lay[mis], lay]))
            else:  # the objects of [real, real, fake]: the middle third paired with the next object's words
                rows, boxes, words = objs
                tri = (torch.cat([rows, rows + B, rows + 2 * B]), boxes.repeat(3, 1),
                       torch.cat([words, words.roll(1, 0), words]))  # fmt: skip
                outs, patches, ol = self.p["D"](imgs, sents, con, torch.cat([lay, lay[mis], lay]), tri)
                n = len(rows)
                out["d_object"] = L.matching_aware_d_loss(self.t.gan_loss, ol[:n], ol[n : 2 * n], ol[2 * n :])
            out["d_layout"] = sum(L.matching_aware_d_loss(self.t.gan_loss, p[:B].flatten(), p[B : 2 * B].flatten(),
                                                          p[2 * B :].flatten()) for p in patches)  # fmt: skip
        stages = Dm.stages
        for (cond, uncond, *emb), (r, s), stage in zip(outs, leaves, stages):
            if con:  # real images against their own captions (rows :B hold real/matching)
                ei, et = emb[0]
                h = stage.embed_text(hard, normed=True) if hard is not None else None
                out["d_con"] = out["d_con"] + L.contrastive_loss(ei[:B], et[:B], self.t.contrastive_tau, same, h,
                                                                 hard_rows)  # fmt: skip
            real_u = uncond[:B] if uncond is not None else None
            fake_u = uncond[2 * B :] if uncond is not None else None
            out["d_adv"] = out["d_adv"] + L.matching_aware_d_loss(
                self.t.gan_loss, cond[:B], cond[B : 2 * B], cond[2 * B :], real_u, fake_u, self.t.uncond_weight
            )
            if gp:
                gi, gs = torch.autograd.grad(cond[:B].sum(), (r, s), create_graph=True)
                norm = torch.sqrt(gi.flatten(1).pow(2).sum(1) + gs.pow(2).sum(1) + 1e-12)
                out["d_gp"] = out["d_gp"] + self.t.ma_gp_weight * norm.pow(self.t.ma_gp_power).mean()
        out["loss"] = out["d_adv"] + out["d_gp"] + (self.t.contrastive_weight * out["d_con"] if con else 0.0)
        if lay is not None:
            out["loss"] = out["loss"] + self.t.layout_d_weight * out["d_layout"]
        if "d_object" in out:
            out["loss"] = out["loss"] + self.t.object_d_weight * out["d_object"]
        return out

    def g_step(self, batch, step):
        f, _, same = self._features(batch)
        lay = self._true_layout(self.acc.unwrap_model(self.p["G"]), batch, f)
        o = self._g_forward(self.p["G"], batch, f, step, 1, lay)
        D = self.acc.unwrap_model(self.p["D"])
        imgs = o.images[len(o.images) - D.n :]
        con = self.t.contrastive_weight > 0
        text = D.text(f.sentence, f.words, f.mask)
        patches, ol = [], None
        objs = self._objects(batch, f) if lay is not None else None
        if lay is None:
            outs = D(imgs, [text] * len(imgs), con)
        elif objs is None:  # D judges the image against the map as a given: G's loss does not repaint the map
            outs, patches = D(imgs, [text] * len(imgs), con, lay.detach())
        else:
            outs, patches, ol = D(imgs, [text] * len(imgs), con, lay.detach(), objs)
        hard, hard_rows = self._contrastive_near_misses(batch, step)
        hard = self._hard_text(hard, D)
        adv, g_con = 0.0, 0.0
        for (cond, uncond, *emb), stage in zip(outs, D.stages):
            if con:
                h = stage.embed_text(hard, normed=True) if hard is not None else None
                g_con = g_con + L.contrastive_loss(*emb[0], self.t.contrastive_tau, same, h, hard_rows)
            adv = adv + L.g_adv_loss(self.t.gan_loss, cond)
            if uncond is not None:
                adv = adv + self.t.uncond_weight * L.g_adv_loss(self.t.gan_loss, uncond)
        kl = sum(L.kl_loss(m, lv) for m, lv in zip(o.mu, o.logvar))
        out = {"g_adv": adv, "g_kl": kl, "loss": adv + self.t.kl_weight * kl}
        if patches:
            out["g_layout"] = sum(L.g_adv_loss(self.t.gan_loss, p.flatten()) for p in patches)
            out["loss"] = out["loss"] + self.t.layout_d_weight * out["g_layout"]
        if ol is not None:
            out["g_object"] = L.g_adv_loss(self.t.gan_loss, ol)
            out["loss"] = out["loss"] + self.t.object_d_weight * out["g_object"]
        if con:
            out["g_con"] = g_con
            out["loss"] = out["loss"] + self.t.contrastive_weight * g_con
        if self.t.contrastive_image_weight > 0:
            from t2i.models.stackgan import downsample_to

            real = batch["image"].to(self.acc.device)
            with torch.no_grad():  # the real side is a fixed target for G's phase
                reals = D([downsample_to(real, x.shape[-1]) for x in imgs], [text] * len(imgs), True)
            out["g_con_img"] = sum(L.image_contrastive_loss(emb[0][0], r_emb[0][0], self.t.contrastive_tau, same)
                                   for (_, _, *emb), (_, _, *r_emb) in zip(outs, reals))  # fmt: skip
            out["loss"] = out["loss"] + self.t.contrastive_image_weight * out["g_con_img"]
        if self.damsm is not None:
            lw, ls = self.damsm.losses(o.images[-1], f.words, f.mask, f.sentence, same)
            out["g_damsm"] = lw + ls
            out["loss"] = out["loss"] + self.t.lambda_damsm * out["g_damsm"]
        return out

    def after_step(self, step):
        G = self.acc.unwrap_model(self.p["G"])
        if self.acc.num_processes > 1:
            # DDP syncs gradients, not BN running statistics: average them so every rank holds the same generator.
            from accelerate.utils import reduce

            for b in G.buffers():
                if b.is_floating_point():
                    b.copy_(reduce(b, "mean"))
        # Update G_ema.
        self.ema.update_parameters(G)

    def export(self, path, dtype, extra=None):
        from t2i.pipelines import export_generator

        d = self.data_cfg
        return export_generator(path, self.family, self.ema.module, self.cfg, d.text_encoder, d.max_length, dtype,
                                extra, text_layer=d.text_layer)  # fmt: skip

    def pipeline(self):
        """An in-memory pipeline over a copy of the EMA generator (for sample grids and metrics)."""
        import copy

        from t2i.pipelines import T2IPipeline

        G = copy.deepcopy(self.ema.module)
        d = self.data_cfg
        pipe = T2IPipeline(self.family, G, self.cfg, d.text_encoder, d.max_length, self.encoder, d.text_layer)
        return pipe.to(self.acc.device)

    def state_modules(self) -> dict:
        return {"G": self.acc.unwrap_model(self.p["G"]), "D": self.acc.unwrap_model(self.p["D"]), "G_ema": self.ema}


def step_generator(seed: int, step: int, rank: int, salt: int) -> torch.Generator:
    """A CPU generator for one (step, process, purpose): integer tuples hash identically in every process, so resumed
    and multi-process runs draw the same noise."""
    return torch.Generator().manual_seed(hash((seed, step, rank, salt)) % 2**62)


def ema_with_warmup(decay: float):
    """EMA update for AveragedModel(multi_avg_fn=...) with the usual warm-up (as diffusers' EMAModel): the decay used
    after n updates is min(decay, (1 + n) / (10 + n)), so a short run's EMA is not still mostly its random
    initialisation.

    One fused update per dtype group with the decay computed on the device: a per-parameter avg_fn that read the
    update count as a Python number forced a device -> host sync for every parameter (~300 per GAN step), which
    serialised a GPU step behind the host. Integer buffers (BatchNorm's num_batches_tracked) are copied."""

    def multi_avg_fn(averaged: list, current: list, num_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        n = num_averaged.to(averaged[0].dtype)
        d = torch.clamp((1 + n) / (10 + n), max=decay)
        torch._foreach_mul_(averaged, d)
        torch._foreach_add_(averaged, torch._foreach_mul(current, 1 - d))

    return multi_avg_fn


class MultiStageD(torch.nn.Module):
    """The per-stage discriminators as one module (one DDP forward per phase): lists in, lists out. With a WordPool
    (model.word_pool), `text()` turns (sentence, words, mask) into the sentence vector every stage reads."""

    def __init__(self, stages: torch.nn.ModuleList, pool: torch.nn.Module | None = None,
                 layout: torch.nn.ModuleList | None = None, objects: torch.nn.Module | None = None):  # fmt: skip
        super().__init__()
        self.stages = stages
        self.n = len(stages)
        self.pool = pool
        self.layout = layout  # one t2i.nn.LayoutPatchD per stage (a generator with a layout stage)
        self.objects = objects  # a t2i.nn.ObjectD on the last stage's images

    def text(self, sentence, words, mask):
        return sentence if self.pool is None else self.pool(sentence, words, mask)

    def forward(self, images: list, sentences: list, contrastive: bool = False, layout: torch.Tensor | None = None,
                objects: tuple | None = None):  # fmt: skip
        """-> per stage (cond, uncond[, embeddings]); with `layout` (B, C, R, R), also the layout PatchGANs' patch
        logits per stage: (that list, [(B, P)]); with `objects` (rows (N,), boxes (N, 4), words (N, D)) as well, the
        object discriminator's logits on the last stage's images: (that list, [(B, P)], (N,))."""
        outs = [d(x, s, contrastive) for d, x, s in zip(self.stages, images, sentences)]
        if layout is None:
            return outs
        if self.layout is None:
            raise ValueError("this discriminator has no layout PatchGANs (the generator has no layout stage)")
        patches = [d(x, layout) for d, x in zip(self.layout, images)]
        if objects is None:
            return outs, patches
        from t2i.nn import crop_boxes

        rows, boxes, words = objects
        crops = crop_boxes(images[-1], rows, boxes, self.objects.size)
        return outs, patches, self.objects(crops, words)


def load_damsm(path):
    """A DAMSM export folder (config.json + damsm.safetensors) -> frozen DAMSM in eval mode; its `text_layer` says
    which text-encoder layer's word features it was trained on (-1: the last)."""
    from t2i.models.attngan import DAMSM, DAMSMConfig
    from t2i.pipelines import resolve_checkpoint

    p = resolve_checkpoint(path)
    cfg = json.loads((p / "config.json").read_text())
    if cfg.get("family") != "damsm":
        raise ValueError(f"{p} is a {cfg.get('family')!r} checkpoint, not a DAMSM one")
    m = DAMSM(DAMSMConfig(**cfg["model"]))
    m.load_state_dict({k: v.float() for k, v in load_file(str(p / "damsm.safetensors")).items()})
    m.text_layer = int((cfg.get("text_encoder") or {}).get("layer", -1))
    return m.eval().requires_grad_(False)


class DAMSMFamily:
    """DAMSM pretraining: image encoder + text head trained with L_w + L_s (no GAN, one phase)."""

    def __init__(self, family: str, model_cfg: dict, tcfg: TrainConfig):
        from t2i.models.attngan import DAMSM, DAMSMConfig

        self.family, self.t = family, tcfg
        self.cfg = _from_dict(DAMSMConfig, model_cfg, "model")
        self.modules = {"damsm": DAMSM(self.cfg)}
        self.optimizers = {
            "damsm": torch.optim.Adam(self.modules["damsm"].parameters(), lr=tcfg.lr_d, betas=tuple(tcfg.betas))
        }
        self.ema = self.damsm = None
        self.phases = [Phase("damsm", self.step, "damsm", 1, ["damsm"])]

    bind = GANFamily.bind
    _features = GANFamily._features

    def step(self, batch, step):
        f, _, same = self._features(batch)
        real = batch["image"].to(self.acc.device)
        lw, ls = self.p["damsm"](real, f.words, f.mask, f.sentence, same)  # one DDP forward
        return {"damsm_w": lw, "damsm_s": ls, "loss": lw + ls}

    def after_step(self, step):
        pass

    def export(self, path, dtype, extra=None):
        import os

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        m = self.acc.unwrap_model(self.p["damsm"])
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}, str(tmp / "damsm.safetensors")
        )
        cfg = {"family": "damsm", "resolution": self.cfg.resolution, "model": dataclasses.asdict(self.cfg),
               "text_encoder": {"name_or_path": self.data_cfg.text_encoder, "max_length": self.data_cfg.max_length,
                                "layer": self.data_cfg.text_layer},
               **(extra or {})}  # fmt: skip
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    def pipeline(self):
        return None

    def state_modules(self) -> dict:
        return {"damsm": self.acc.unwrap_model(self.p["damsm"])}


FAMILIES = {"stackgan": GANFamily, "attngan": GANFamily, "damsm": DAMSMFamily}
# The baselines of #5 (diffusion, VQGAN autoencoder, VQGAN prior) train through this same loop.
from t2i.train_baselines import BASELINE_FAMILIES  # noqa: E402

FAMILIES.update(BASELINE_FAMILIES)


# ---------------------------------------------------------------------------------------------------------------
# Run folders and checkpoints.


def new_run_dir(name: str, runs_dir: Path) -> Path:
    runs_dir.mkdir(parents=True, exist_ok=True)
    nums = [
        int(m.group(1)) for p in runs_dir.glob(f"{name}-*") if (m := re.fullmatch(rf"{re.escape(name)}-(\d+)", p.name))
    ]
    d = runs_dir / f"{name}-{max(nums, default=-1) + 1:03d}"
    d.mkdir()
    return d


def latest_checkpoint(run_dir: Path) -> Path | None:
    cks = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    cks = [c for c in cks if (c / "state.json").is_file()]
    return cks[-1] if cks else None


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_recipe(recipe_path: str | Path, overrides: list[str], resume: str, runs_dir: str | Path) -> dict:
    """The recipe to resume with: the run's own config.yaml (what it was trained with) plus this command's
    KEY=VALUE overrides. The recipe file only names the run for `--resume latest`; where it now says something else
    than the run's config, a warning names each key and the run's value is kept (pass KEY=VALUE to change it)."""
    file_recipe = load_recipe(recipe_path)
    run_dir, _ = find_resume(resume, file_recipe["name"], Path(runs_dir))
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():  # a run folder from before config.yaml existed: the recipe file is all we have
        return load_recipe(recipe_path, overrides)
    saved = yaml.safe_load(saved_path.read_text()) or {}
    if saved.get("family") != file_recipe["family"]:
        raise ValueError(f"--resume {resume}: {run_dir} is a {saved.get('family')!r} run, {recipe_path} a "
                         f"{file_recipe['family']!r} recipe")  # fmt: skip
    overridden = {ov.split("=", 1)[0] for ov in overrides if "=" in ov}
    have = _leaves(saved)
    for key, val in sorted(_leaves(file_recipe).items()):
        if key in have and have[key] != val and key not in overridden and key != "train.max_steps":
            warnings.warn(f"{recipe_path} says {key}={val!r} but {run_dir} was trained with {have[key]!r}; "
                          f"resuming with the run's value (pass {key}=... to change it)", stacklevel=2)  # fmt: skip
    return apply_overrides(saved, overrides)


def find_resume(resume: str, name: str, runs_dir: Path) -> tuple[Path, Path]:
    """'latest' (the newest run of this recipe with a checkpoint) | a run folder | a checkpoint folder."""
    if resume == "latest":
        runs = sorted((p for p in runs_dir.glob(f"{name}-*") if re.fullmatch(rf"{re.escape(name)}-\d+", p.name)),
                      key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True)  # fmt: skip
        for r in runs:
            ck = latest_checkpoint(r)
            if ck is not None:
                return r, ck
        raise FileNotFoundError(f"--resume latest: no run of {name!r} with a checkpoint under {runs_dir}/")
    p = Path(resume)
    if (p / "state.json").is_file():
        return p.parent.parent, p
    ck = latest_checkpoint(p) if p.is_dir() else None
    if ck is None:
        raise FileNotFoundError(f"--resume {resume}: not a run folder with checkpoints nor a checkpoint folder")
    return p, ck


def save_checkpoint(run_dir: Path, step: int, fam, state: dict, keep: int) -> Path:
    """Models as safetensors, optimizer states (tensors + numbers only), state.json; tmp folder then rename."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, m in fam.state_modules().items():
        sd = {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
        save_file(sd, str(tmp / f"{name}.safetensors"))
    for name, opt in fam.optimizers.items():
        torch.save(opt.state_dict(), tmp / f"optimizer_{name}.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ck: Path, fam) -> dict:
    for name, m in fam.state_modules().items():
        m.load_state_dict(load_file(str(ck / f"{name}.safetensors")))
    for name, opt in fam.optimizers.items():
        opt.load_state_dict(torch.load(ck / f"optimizer_{name}.pt", map_location="cpu", weights_only=True))
    return json.loads((ck / "state.json").read_text())


def save_grid(images: torch.Tensor, nrow: int, path: Path) -> None:
    """(N, 3, H, W) in [-1, 1] -> PNG grid with nrow images per row (atomic write)."""
    from PIL import Image

    from t2i.data.dataset import tensor_to_pil

    N, _, H, W = images.shape
    rows = math.ceil(N / nrow)
    grid = Image.new("RGB", (nrow * (W + 2) + 2, rows * (H + 2) + 2), (128, 128, 128))
    for i in range(N):
        grid.paste(tensor_to_pil(images[i]), (2 + (i % nrow) * (W + 2), 2 + (i // nrow) * (H + 2)))
    tmp = path.with_suffix(".tmp.png")
    grid.save(tmp)
    os.replace(tmp, path)


def default_sample_captions(dcfg: DataConfig, n: int = 8) -> list[str]:
    if dcfg.sample_captions:
        return list(dcfg.sample_captions)
    from t2i.data.dataset import load_dataset

    spec = dcfg.dataset + ":test" if dcfg.dataset == "shapes" else dcfg.dataset
    ds = load_dataset(spec, "test", 8, length=n, seed=dcfg.seed)
    return [ds[i].captions[0] for i in range(min(n, len(ds)))]


def export_checkpoint(ck: str | Path, out: str | Path, weights: str = "G_ema", dtype: str = "float16") -> Path:
    """A GAN run's checkpoint folder -> a pipeline folder (config.json + generator.safetensors) from its G_ema
    (default) or raw G weights, e.g. to bundle a snapshot other than the run's latest export."""
    from t2i.pipelines import build_generator, export_generator

    ck = Path(ck)
    if weights not in ("G_ema", "G"):
        raise ValueError(f"weights must be 'G_ema' or 'G', got {weights!r}")
    run = yaml.safe_load((ck.parent.parent / "config.yaml").read_text())
    if run["family"] not in ("stackgan", "attngan"):
        raise ValueError(f"{ck}: family {run['family']!r} has no generator to export")
    G, cfg = build_generator(run["family"], run["model"])
    state = load_file(str(ck / f"{weights}.safetensors"))
    if weights == "G_ema":  # AveragedModel keys: module.<name>, plus n_averaged
        state = {k[len("module.") :]: v for k, v in state.items() if k.startswith("module.")}
    G.load_state_dict(state)
    step = json.loads((ck / "state.json").read_text())
    extra = {"step": step["step"], "images_seen": step.get("images_seen"), "weights": weights}
    data = run.get("data") or {}
    return export_generator(out, run["family"], G, cfg, data.get("text_encoder"), int(data.get("max_length", 32)),
                            getattr(torch, dtype), extra, text_layer=int(data.get("text_layer", -1)))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The loop.


def check_train_config(tcfg: TrainConfig) -> None:
    """Reject settings that would fail (or misbehave) hours into a run, before a run folder exists."""
    for k, lo in (("log_every", 1), ("checkpoint_every", 1), ("sample_every", 0), ("eval_every", 0)):
        v = getattr(tcfg, k)
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"train.{k} must be an integer >= {lo}{' (never)' if lo == 0 else ''}, got {v!r}")
    if not 0 <= tcfg.contrastive_near_miss <= 1:
        raise ValueError(
            f"train.contrastive_near_miss is a fraction of the batch (0-1), got {tcfg.contrastive_near_miss!r}"
        )
    if not 0 <= tcfg.contrastive_mirror <= 1:
        raise ValueError(f"train.contrastive_mirror is a fraction of the batch (0-1), got {tcfg.contrastive_mirror!r}")
    if tcfg.contrastive_mirror > 0 and tcfg.contrastive_near_miss > 0:
        raise ValueError(
            "train.contrastive_near_miss and train.contrastive_mirror both add the one extra negative per image: "
            "set one of them"
        )
    if tcfg.contrastive_weight < 0 or tcfg.contrastive_tau <= 0 or tcfg.contrastive_dim < 1:
        got = f"{tcfg.contrastive_weight!r} / {tcfg.contrastive_tau!r} / {tcfg.contrastive_dim!r}"
        raise ValueError(f"train.contrastive_weight must be >= 0, contrastive_tau > 0, contrastive_dim >= 1: {got}")
    if tcfg.contrastive_image_weight < 0 or (tcfg.contrastive_image_weight > 0 and tcfg.contrastive_weight <= 0):
        raise ValueError(
            "train.contrastive_image_weight must be >= 0 and needs train.contrastive_weight > 0 (it uses the "
            f"contrastive heads), got {tcfg.contrastive_image_weight!r} with contrastive_weight "
            f"{tcfg.contrastive_weight!r}"
        )
    if tcfg.on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"train.on_nonfinite must be 'stop' or 'skip', got {tcfg.on_nonfinite!r}")
    if tcfg.mismatch not in ("batch", "near_miss", "mixed"):
        raise ValueError(f"train.mismatch must be 'batch', 'near_miss' or 'mixed', got {tcfg.mismatch!r}")
    if not isinstance(tcfg.max_minutes, (int, float)) or tcfg.max_minutes < 0:
        raise ValueError(f"train.max_minutes must be a number >= 0 (0: no limit), got {tcfg.max_minutes!r}")
    if tcfg.mixed_precision is False:  # YAML 1.1 reads a bare `no` (train.mixed_precision=no) as false
        tcfg.mixed_precision = "no"
    if tcfg.mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"train.mixed_precision must be 'no', 'bf16' or 'fp16', got {tcfg.mixed_precision!r}")


def out_of_time(acc, deadline: float) -> bool:
    """Whether the wall-clock deadline has passed, decided by the main process so that every rank stops at the same
    step (one tiny broadcast per step, only when a limit is set)."""
    flag = time.time() >= deadline
    if acc.num_processes == 1:
        return flag
    from accelerate.utils import broadcast

    return bool(broadcast(torch.tensor([int(flag)], device=acc.device)).item())


def train(recipe: dict, resume: str | None = None, max_steps: int | None = None, runs_dir: str | Path = RUNS_DIR,
          progress: bool = True, text_encoder=None) -> Path:  # fmt: skip
    """Train a recipe; returns the run folder."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list
    from tqdm.auto import tqdm

    from t2i.text import TextEncoder, default_cache_dir

    runs_dir = Path(runs_dir)
    family = recipe["family"]
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")
    tcfg = _from_dict(TrainConfig, dict(recipe.get("train") or {}), "train")
    dcfg = _from_dict(DataConfig, dict(recipe.get("data") or {}), "data")
    if max_steps is not None:
        tcfg.max_steps = max_steps
    check_train_config(tcfg)
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)

    # cpu=True without CUDA, so `torchrun`/`accelerate launch` processes on a CPU-only machine join a gloo group.
    acc = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=tcfg.mixed_precision,
        gradient_accumulation_steps=tcfg.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    # One run folder for all processes: the main process decides, the others are told.
    obj = [None, None]
    if acc.is_main_process:
        if resume:
            run_dir, ck = find_resume(resume, recipe["name"], runs_dir)
        else:
            run_dir, ck = new_run_dir(recipe["name"], runs_dir), None
        obj = [str(run_dir), str(ck) if ck else None]
    if acc.num_processes > 1:
        broadcast_object_list(obj)
    run_dir, ck = Path(obj[0]), (Path(obj[1]) if obj[1] else None)
    if acc.is_main_process:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(
            {"name": recipe["name"], "family": family, "model": recipe["model"], "data": dataclasses.asdict(dcfg),
             "train": dataclasses.asdict(tcfg)}, sort_keys=False))  # fmt: skip

    torch.manual_seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    fam = FAMILIES[family](family, dict(recipe["model"]), tcfg)
    fam.data_cfg = dcfg
    damsm = getattr(fam, "damsm", None)
    if damsm is not None and damsm.text_layer != dcfg.text_layer:
        raise ValueError(
            f"model.damsm_checkpoint was trained on text-encoder layer {damsm.text_layer} but this run has "
            f"data.text_layer={dcfg.text_layer}: pretrain a DAMSM with the same data.text_layer"
        )
    if text_encoder is not None and getattr(text_encoder, "layer", -1) != dcfg.text_layer:
        raise ValueError(f"the text encoder given reads layer {text_encoder.layer}, the recipe data.text_layer="
                         f"{dcfg.text_layer}: the export would record features it was not trained on")  # fmt: skip
    names = list(fam.modules)
    prepared = acc.prepare(*fam.modules.values(), *fam.optimizers.values())
    p = dict(zip(names, prepared[: len(names)]))
    fam.optimizers = dict(zip(fam.optimizers, prepared[len(names) :]))
    if fam.ema is not None:
        fam.ema.to(acc.device)
    encoder = (
        text_encoder
        if text_encoder is not None
        else TextEncoder(
            dcfg.text_encoder, max_length=dcfg.max_length, cache_dir=default_cache_dir(), layer=dcfg.text_layer
        )
    )
    fam.bind(acc, encoder, p)
    data = Batches(dcfg, tcfg.batch_size, acc.process_index, acc.num_processes, tcfg.seed)

    state = {"images_seen": 0, "train_seconds": 0.0}
    start = 0
    if ck is not None:
        state = load_checkpoint(ck, fam)
        start = state.pop("step")
        acc.print(f"resumed from {ck} at step {start}")
    if acc.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(run_dir / "logs"))
        sample_caps = default_sample_captions(dcfg)
        log_file = open(run_dir / "train.log", "a")
    acc.wait_for_everyone()

    bar = tqdm(total=tcfg.max_steps, initial=start, desc=run_dir.name, disable=not (progress and acc.is_main_process),
               dynamic_ncols=True, smoothing=0.1)  # fmt: skip
    step, t_last, last_logs = start, time.time(), {}
    deadline = t_last + 60 * tcfg.max_minutes if tcfg.max_minutes else None
    while step < tcfg.max_steps:
        for micro in range(tcfg.grad_accum):
            # Fetch training data.
            batch = data.get(step * tcfg.grad_accum + micro)
            with acc.accumulate(*p.values()):
                for ph in fam.phases:
                    if step % ph.interval:
                        continue
                    # Update D. / Update G.: only this phase's modules take gradients.
                    for n, m in p.items():
                        acc.unwrap_model(m).requires_grad_(n in ph.trains)
                    for q in getattr(fam, "frozen_parameters", list)():  # parts of a trained module kept fixed
                        q.requires_grad_(False)
                    opt = fam.optimizers[ph.optimizer]
                    with acc.autocast():
                        out = ph.fn(batch, step)
                    # One device -> host sync per phase for the check (not one per loss): on a GPU every sync
                    # stalls the queue of launched work.
                    losses = [v.detach().float().reshape(-1) for v in out.values() if torch.is_tensor(v)]
                    if losses and not bool(torch.isfinite(torch.cat(losses)).all()):
                        bad = [k for k, v in out.items() if torch.is_tensor(v) and not torch.isfinite(v).all()]
                        msg = f"step {step}: non-finite loss in phase {ph.name}: " + ", ".join(
                            f"{k}={float(out[k].detach())}" for k in bad)  # fmt: skip
                        if tcfg.on_nonfinite == "stop":
                            raise NonFiniteLossError(msg + " (set train.on_nonfinite=skip to skip such steps)")
                        warnings.warn(msg + " - step skipped", stacklevel=1)
                        opt.zero_grad(set_to_none=True)
                        continue
                    acc.backward(out["loss"])
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    # Kept on the device until a log step reads them (a float() here would sync every step).
                    last_logs.update({k: v.detach() if torch.is_tensor(v) else v
                                      for k, v in out.items() if k != "loss"})  # fmt: skip
        step += 1
        state["images_seen"] += tcfg.batch_size * tcfg.grad_accum * acc.num_processes
        now = time.time()
        state["train_seconds"] += now - t_last
        t_last = now
        # Update G_ema.
        fam.after_step(step)
        bar.update(1)

        if acc.is_main_process and (step % tcfg.log_every == 0 or step == tcfg.max_steps):
            ips = state["images_seen"] / max(state["train_seconds"], 1e-9)
            last_logs = {k: float(v) for k, v in last_logs.items()}
            bar.set_postfix({k: f"{v:.3f}" for k, v in last_logs.items()}, refresh=False)
            for k, v in last_logs.items():
                tb.add_scalar(f"loss/{k}", v, step)
            tb.add_scalar("perf/images_per_second", ips, step)
            log_file.write(json.dumps({"step": step, **last_logs, "images_per_second": round(ips, 2)}) + "\n")
            log_file.flush()
        if deadline is not None and out_of_time(acc, deadline):
            acc.print(f"train.max_minutes={tcfg.max_minutes} reached at step {step}: saving and stopping")
            tcfg.max_steps = step  # the step just taken is the last: checkpoint, export, samples and metrics below
        # Save network snapshot.
        last = step == tcfg.max_steps
        if step % tcfg.checkpoint_every == 0 or last:
            acc.wait_for_everyone()
            if acc.is_main_process:
                save_checkpoint(run_dir, step, fam, state, tcfg.keep_checkpoints)
                fam.export(run_dir / "export", getattr(torch, tcfg.export_dtype),
                           {"step": step, "images_seen": state["images_seen"]})  # fmt: skip
            acc.wait_for_everyone()
        if acc.is_main_process and tcfg.sample_every and (step % tcfg.sample_every == 0 or last):
            pipe = fam.pipeline()
            if pipe is not None:
                (run_dir / "samples").mkdir(exist_ok=True)
                imgs = pipe(sample_caps, num_images_per_caption=4, seed=0)
                save_grid(imgs, 4, run_dir / "samples" / f"step-{step:06d}.png")
                (run_dir / "samples" / "captions.txt").write_text("\n".join(sample_caps) + "\n")
        # Evaluate metrics.
        if acc.is_main_process and tcfg.eval_every and (step % tcfg.eval_every == 0 or last):
            res = evaluate_during_training(fam, dcfg, tcfg)
            if res:
                res = {"step": step, "images_seen": state["images_seen"], **res}
                with open(run_dir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(res) + "\n")
                for k, v in res.items():
                    if isinstance(v, (int, float)):
                        tb.add_scalar(f"metrics/{k}", v, step)
                bar.write(f"step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in res.items() if isinstance(v, float)))
    bar.close()
    if acc.is_main_process:
        tb.close()
        log_file.close()
    acc.wait_for_everyone()
    acc.end_training()
    return run_dir


def evaluate_during_training(fam, dcfg: DataConfig, tcfg: TrainConfig) -> dict | None:
    """#4's metrics on the EMA generator; skipped with a warning when they are unavailable."""
    if dcfg.dataset != "shapes" or fam.pipeline() is None:
        return None
    try:
        from t2i.metrics import evaluate
    except ImportError as e:
        warnings.warn(f"metrics skipped: t2i.metrics is not available ({e})", stacklevel=1)
        return None
    try:
        return evaluate(fam.pipeline(), "shapes", list(tcfg.eval_metrics), num_samples=tcfg.eval_num_samples,
                        progress=False)  # fmt: skip
    except Exception as e:  # a missing evaluator checkpoint must not kill a training run
        warnings.warn(f"metrics skipped: {type(e).__name__}: {e}", stacklevel=1)
        return None


# ---------------------------------------------------------------------------------------------------------------
# CLI.

EXAMPLES = """examples:
  t2i train configs/t2i/shapes_stackgan.yaml
  t2i train configs/t2i/shapes_damsm.yaml --max-steps 3000
  t2i train configs/t2i/shapes_attngan.yaml model.damsm_checkpoint=runs/shapes_damsm-000 train.batch_size=16
  t2i train configs/t2i/shapes_attngan.yaml --resume latest
  accelerate launch --num_processes 2 -m t2i.train configs/t2i/shapes_stackgan.yaml   # multi-process
"""


def _cmd_train(args) -> int:
    # Options written after the overrides (`t2i train C a=1 --max-steps 5`) reach us inside the REMAINDER list.
    rest = argparse.ArgumentParser(prog="t2i train", add_help=False, argument_default=argparse.SUPPRESS)
    _add_options(rest)
    rest.add_argument("overrides", nargs="*")
    if args.overrides:
        parsed = rest.parse_intermixed_args(list(args.overrides))
        vars(args).update(vars(parsed))
        args.overrides = getattr(parsed, "overrides", [])  # only options followed: no KEY=VALUE at all
    if args.resume:
        recipe = resume_recipe(args.config, args.overrides, args.resume, args.runs_dir)
    else:
        recipe = load_recipe(args.config, args.overrides)
    run = train(recipe, resume=args.resume, max_steps=args.max_steps, runs_dir=args.runs_dir,
                progress=not args.no_progress)  # fmt: skip
    print(f"run folder: {run}  (export: {run / 'export'})")
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    _add_options(p)
    p.add_argument("config", help="recipe YAML (configs/t2i/*.yaml)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="KEY=VALUE",
                   help="overrides, e.g. train.batch_size=16 model.ngf=16 (options may follow)")  # fmt: skip


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resume",
        default=None,
        help="'latest' (newest run of this recipe) or a run/checkpoint folder; the run goes on with its own "
        "config.yaml (KEY=VALUE overrides still apply; the recipe file's differing keys are named, not used)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (overrides the recipe)")
    p.add_argument("--runs-dir", default=str(RUNS_DIR), help="where run folders go (default runs/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def configure_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a recipe (StackGAN, AttnGAN, DAMSM, ...) with accelerate",
        description="Train CONFIG into runs/<name>-NNN/ (config.yaml, checkpoints/, export/, samples/, logs/, "
        "train.log, metrics.jsonl). Resumable after a kill; multi-process through `accelerate launch`.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=_cmd_train)


def main(argv=None) -> int:
    """`python -m t2i.train CONFIG ...` (what `accelerate launch -m t2i.train` runs)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    p = argparse.ArgumentParser(
        prog="t2i-train", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_arguments(p)
    return _cmd_train(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
