"""Training families of the baselines (#5) for the one loop in `t2i.train`: VQGAN autoencoder, VQGAN prior, diffusion.

Each family follows the loop's protocol (modules, optimizers, phases, bind, after_step, export, pipeline,
state_modules), so `t2i train configs/t2i/shapes_vqgan.yaml` runs through the same accelerate loop, run folders,
atomic checkpoints, resume, sample grids and metrics as the GANs.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import torch

from t2i.pipelines import atomic_dir


def _from_dict(cls, d: dict, where: str):
    from t2i.train import _from_dict as f

    return f(cls, d, where)


class _Base:
    """Shared plumbing: binding to the accelerator, caption features, the EMA of the trained network."""

    ema = None

    def bind(self, accelerator, encoder, prepared: dict):
        self.acc, self.encoder, self.p = accelerator, encoder, prepared
        for m in getattr(self, "frozen", {}).values():
            m.to(accelerator.device)

    def _features(self, captions):
        return self.encoder.encode(list(captions)).to(self.acc.device)

    def _dropped(self, batch, step: int, p: float):
        from t2i.models.diffusion import drop_captions
        from t2i.train import step_generator

        return drop_captions(batch["captions"], p, step_generator(self.t.seed, step, self.acc.process_index, 7))

    def _map_only(self, f, captions, step, share: float):
        """f with the cross-attention features of a `share` of the captioned rows replaced by the empty caption's
        (their layout map, already painted, keeps the caption's objects: layout_text_dropout)."""
        from t2i.train import step_generator

        g = step_generator(self.t.seed, step, self.acc.process_index, 11)
        rows = (torch.rand(len(captions), generator=g) < share).tolist()
        rows = [i for i, (r, c) in enumerate(zip(rows, captions)) if r and c]
        if not rows:
            return f
        null = self._features([""])
        n = null.words.shape[1]
        words, mask, sentence = f.words.clone(), f.mask.clone(), f.sentence.clone()
        words[rows], mask[rows] = 0, False
        words[rows, :n], mask[rows, :n] = null.words[0].to(words.dtype), null.mask[0]
        sentence[rows] = null.sentence[0].to(sentence.dtype)
        return dataclasses.replace(f, words=words, mask=mask, sentence=sentence)

    def _make_ema(self, module):
        from torch.optim.swa_utils import AveragedModel

        from t2i.train import ema_with_warmup

        # The GANs' EMA with warm-up: a CPU-sized run's EMA is not still mostly its random initialisation.
        ema = AveragedModel(module, multi_avg_fn=ema_with_warmup(self.t.ema_decay), use_buffers=True)
        return ema.requires_grad_(False)

    def _per_image(self, cache: dict, batch, encode) -> torch.Tensor:
        """encode(images) for the batch, computed once per training image and cached by dataset index.

        The loop serves every index the same image (no augmentation), so after the first epoch a step pays nothing
        for the frozen encoder."""
        ids = [int(i) for i in batch["index"]]
        todo = [j for j, i in enumerate(ids) if i not in cache]
        if todo:
            with torch.no_grad():
                out = encode(batch["image"][todo].to(self.acc.device))
            for j, o in zip(todo, out):
                cache[ids[j]] = o
        return torch.stack([cache[i] for i in ids])

    def _init_from(self, module, path, sub: str, extra_in: int = 0):
        """Copy the weights of `sub`/ (unet, prior) of an export, bundle or run folder into `module` (fine-tuning, or
        going on from a bundle whose run folder is gone). The architectures must agree: differing config keys are
        named in the error. The optimizer starts fresh, like the GANs' `train.init_from`.

        extra_in > 0: `module` is a UNet with that many more input channels (a layout map) than the source; the
        source's input convolution is kept and the new channels' weights start at zero, so at first it predicts what
        it did."""
        from safetensors.torch import load_file

        from t2i.pipelines import resolve_checkpoint

        root = resolve_checkpoint(path)
        src = root / sub
        if not (src / "config.json").is_file():
            raise ValueError(f"train.init_from={path}: no {sub}/ folder there (a {self.family} export or run?)")
        theirs = json.loads((src / "config.json").read_text())
        mine = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
        norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
        diff = sorted(k for k in mine if k in theirs and norm(theirs[k]) != norm(mine[k]))
        # switches that only add zero-initialised parameters (LayoutNet.contextual): off in the source, on here
        grown = getattr(module, "grows_with", ())
        diff = [k for k in diff if not (k in grown and not theirs[k] and mine[k])]
        pad = extra_in and diff == ["in_channels"] and theirs["in_channels"] + extra_in == mine["in_channels"]
        if diff and not pad:
            raise ValueError(f"train.init_from={path}: its {sub} differs from this recipe's in {diff}")
        state = load_file(str(src / "diffusion_pytorch_model.safetensors"))
        if pad:
            w = state["conv_in.weight"]
            state["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], extra_in, *w.shape[2:])], 1)
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        # A module may name parameters that start as a no-op (zeros): a source from before they existed lacks them.
        fresh = tuple(getattr(module, "new_parameters", ()))
        missing, unexpected = module.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(fresh)]  # startswith(()) is False: none exempt
        if missing or unexpected:
            raise ValueError(f"train.init_from={path}: its {sub} weights do not fit this recipe's (missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]})")  # fmt: skip
        return root

    def after_step(self, step):
        if self.ema is None:
            return
        if isinstance(self.ema.module, torch.nn.ModuleDict):  # one EMA over all trained modules (+ layout net, ...)
            self.ema.update_parameters(torch.nn.ModuleDict({n: self.acc.unwrap_model(m) for n, m in self.p.items()}))
        else:
            self.ema.update_parameters(self.acc.unwrap_model(self.p[self.trained]))

    def _refuse_layout_source(self, layout, init_from):
        """A source with a layout net only goes into a recipe with a layout stage."""
        from t2i.pipelines import resolve_checkpoint

        if layout is None and (resolve_checkpoint(init_from) / "layout_net").is_dir():
            raise ValueError(f"train.init_from={init_from} has a layout net: set model.layout_channels "
                             "(and layout_width, layout_layers) to its size")  # fmt: skip

    @staticmethod
    def _split_params(module, prefixes: tuple) -> tuple[list, list]:
        """(module's parameters whose names start with one of `prefixes`, the rest)."""
        named = list(module.named_parameters())
        return [p for n, p in named if n.startswith(prefixes)], [p for n, p in named if not n.startswith(prefixes)]

    @classmethod
    def _layout_params(cls, layout, lr: float) -> tuple[list, dict]:
        """(the painting projections, which learn with the main network; the predictor's param group at `lr`)."""
        mine, own = cls._split_params(layout, ("proj.", "hproj."))
        return mine, {"params": own, "lr": lr}

    def _true_layout(self, f, captions, attributes, step: int, h: int, w: int, text_dropout: float):
        """The layout stage of a training step: the scenes' true boxes painted on an h x w grid (with the
        predictor's state at each word when the net is contextual; a dropped caption grounds nothing, so its map is
        empty), the layout net's loss, and f with a `text_dropout` share of the rows made map-only.
        -> (f, painted map, loss)."""
        from t2i.models.diffusion import grounding_targets

        net = self.p["layout_net"]
        boxes, valid = grounding_targets(self.encoder.tokenizer, captions, attributes, f.words.shape[1],
                                         self.encoder.max_length, self._grounding_cache)  # fmt: skip
        boxes, valid = boxes.to(f.words.device), valid.to(f.words.device)
        logit, pred, state = net.predict_with_state(f.words, f.mask)
        layout = net.paint(f.words, boxes, valid.float(), h, w, state=state)
        loss = net.loss(f.words, f.mask, boxes, valid, predicted=(logit, pred))
        if text_dropout > 0:
            f = self._map_only(f, captions, step, text_dropout)
        return f, layout, loss

    def state_modules(self) -> dict:
        out = {n: self.acc.unwrap_model(m) for n, m in self.p.items()}
        if self.ema is not None:
            out["ema"] = self.ema
        return out


# ---------------------------------------------------------------------------------------------------------------
# Diffusion.


class DiffusionFamily(_Base):
    """DDPM training of the text-conditioned UNet (epsilon or v), caption dropout for CFG, EMA for sampling."""

    trained = "unet"

    def __init__(self, family: str, model_cfg: dict, tcfg):
        from t2i.models.diffusion import (
            DiffusionConfig,
            build_layout_net,
            build_noise_scheduler,
            build_unet,
            build_word_adapter,
        )
        from t2i.train import Phase

        self.family, self.t = family, tcfg
        self.cfg = _from_dict(DiffusionConfig, model_cfg, "model")
        self.vq, self._latents = None, {}
        if self.cfg.autoencoder:
            from t2i.models.vqgan import latent_side, load_autoencoder

            # Latent diffusion: the UNet's grid is the autoencoder's latent grid.
            self.vq = load_autoencoder(self.cfg.autoencoder)
            self.frozen = {"vq": self.vq}
            self.cfg.in_channels = self.vq.config.latent_channels
            self.cfg.resolution = latent_side(self.vq)
        unet, adapter, layout = build_unet(self.cfg), build_word_adapter(self.cfg), build_layout_net(self.cfg)
        if tcfg.init_from:
            self._refuse_layout_source(layout, tcfg.init_from)
            src = self._init_from(unet, tcfg.init_from, "unet", extra_in=self.cfg.layout_channels)
            if (src / "word_adapter").is_dir():
                if adapter is None:
                    raise ValueError(f"train.init_from={tcfg.init_from} has a word adapter: set "
                                     "model.word_adapter_layers to its depth")  # fmt: skip
                self._init_from(adapter, tcfg.init_from, "word_adapter")
            # else a fresh adapter, which starts as the identity: the source UNet's behaviour is unchanged
            if (src / "layout_net").is_dir():
                self._init_from(layout, tcfg.init_from, "layout_net")
            # else a fresh layout net, whose map enters through zero weights: the source UNet starts unchanged
            if self.vq is not None:
                self._same_autoencoder(src, tcfg.init_from)
                if not self.cfg.latent_scale > 0:  # the UNet learnt latents at the source's scale: keep it
                    self.cfg.latent_scale = float(json.loads((src / "model_index.json").read_text())["latent_scale"])
        self.noise_scheduler = build_noise_scheduler(self.cfg)
        self.modules = {"unet": unet}
        params = list(unet.parameters())
        if adapter is not None:
            self.modules["word_adapter"] = adapter
            params += list(adapter.parameters())
        groups = [{"params": params}]
        if layout is not None:
            self.modules["layout_net"] = layout
            # The painting projection learns with the UNet; the predictor (from scratch) at its own rate.
            painting, own = self._layout_params(layout, self.cfg.layout_lr)
            groups[0]["params"] += painting
            groups.append(own)
        self.optimizers = {"unet": torch.optim.AdamW(groups, lr=tcfg.lr_g, weight_decay=1e-2)}
        # One EMA over what is trained: the UNet alone (as before the adapter existed, so old runs resume), or all.
        self.ema = self._make_ema(unet if len(self.modules) == 1 else torch.nn.ModuleDict(self.modules))
        self.phases = [Phase("diffusion", self.step, "unet", 1, list(self.modules))]
        self.recorder, self._grounding_cache = None, {}
        if self.cfg.grounding_weight > 0:
            from t2i.models.diffusion import install_recorder

            # After the EMA copy was made: the EMA (what samples) keeps diffusers' default attention processors.
            self.recorder = install_recorder(unet)

    def _same_autoencoder(self, src, path):
        """A latent UNet only makes sense on the latents it was trained on: the source's vqvae/ must be this
        recipe's autoencoder (up to the fp16 rounding of an export)."""
        from safetensors.torch import load_file

        f = src / "vqvae" / "diffusion_pytorch_model.safetensors"
        if not f.is_file():
            raise ValueError(f"train.init_from={path}: a pixel-space UNet, but this recipe is latent diffusion")
        theirs, mine = load_file(str(f)), self.vq.state_dict()
        same = theirs.keys() == mine.keys() and all(
            theirs[k].shape == mine[k].shape and torch.allclose(theirs[k].float(), mine[k].float(), atol=1e-2)
            for k in mine
        )
        if not same:
            raise ValueError(f"train.init_from={path}: its UNet was trained on another autoencoder's latents than "
                             f"model.autoencoder={self.cfg.autoencoder}")  # fmt: skip

    def bind(self, accelerator, encoder, prepared):
        super().bind(accelerator, encoder, prepared)
        if self.vq is not None and not self.cfg.latent_scale > 0:
            # LDM's scale factor: 1 / std of the latents, measured once on the first 512 training images. It is a
            # pure function of the frozen autoencoder and the data, so a resumed run (or every rank) gets the same.
            from t2i.data.dataset import load_dataset

            d = self.data_cfg
            ds = load_dataset(d.dataset, d.split, d.size, min(d.length or 512, 512), d.seed, **d.shapes_kwargs())
            x = torch.stack([ds[i].image for i in range(min(len(ds), 512))])
            with torch.no_grad():
                z = torch.cat([self.vq.encode(c.to(self.acc.device)).latents for c in x.split(64)])
            self.cfg.latent_scale = float(1.0 / z.float().std())

    def _x0(self, batch) -> torch.Tensor:
        """The batch's diffusion targets: pixels, or the (scaled) autoencoder latents of its images (cached)."""
        if self.vq is None:
            return batch["image"].to(self.acc.device)
        z = self._per_image(self._latents, batch, lambda x: self.vq.encode(x).latents)
        return z * self.cfg.latent_scale

    def step(self, batch, step):
        from t2i.models.diffusion import diffusion_loss
        from t2i.train import step_generator

        captions = self._dropped(batch, step, self.cfg.caption_dropout)
        f = self._features(captions)
        x0 = self._x0(batch)
        g = step_generator(self.t.seed, step, self.acc.process_index, 3)
        layout, out = None, {}
        if "layout_net" in self.p:
            f, layout, out["layout"] = self._true_layout(f, captions, batch["attributes"], step, *x0.shape[-2:],
                                                         self.cfg.layout_text_dropout)  # fmt: skip
        if self.recorder is not None:
            self.recorder.maps.clear()
            self.recorder.active = True
        try:
            loss = diffusion_loss(self.p["unet"], self.noise_scheduler, x0, f.words, f.mask, g,
                                  self.p.get("word_adapter"), self.cfg.min_snr_gamma, layout)  # fmt: skip
        finally:
            if self.recorder is not None:
                self.recorder.active = False
        out["mse_min_snr" if self.cfg.min_snr_gamma else "mse"] = loss
        if "layout" in out:
            loss = loss + self.cfg.layout_weight * out["layout"]
        if self.recorder is not None:
            from t2i.models.diffusion import grounding_loss, grounding_targets

            tok = self.encoder.tokenizer
            boxes, valid = grounding_targets(tok, captions, batch["attributes"], f.words.shape[1],
                                             self.encoder.max_length, self._grounding_cache)  # fmt: skip
            dev = x0.device
            gl = grounding_loss(self.recorder.maps, boxes.to(dev), valid.to(dev), *x0.shape[-2:])
            self.recorder.maps.clear()
            out["grounding"] = gl
            loss = loss + self.cfg.grounding_weight * gl
        out["loss"] = loss
        return out

    def _ema_parts(self):
        """(unet, word adapter or None, layout net or None) of the EMA."""
        m = self.ema.module
        if not isinstance(m, torch.nn.ModuleDict):
            return m, None, None
        part = {k: m[k] if k in m else None for k in ("word_adapter", "layout_net")}
        return m["unet"], part["word_adapter"], part["layout_net"]

    def _pipe(self, unet, adapter=None, layout=None):
        from t2i.models.diffusion import build_pipeline

        vq = None if self.vq is None else copy.deepcopy(self.vq).to(unet.device, unet.dtype)
        return build_pipeline(self.cfg, self.data_cfg.text_encoder, self.data_cfg.max_length, unet=unet, vqvae=vq,
                              word_adapter=adapter, text_layer=self.data_cfg.text_layer,
                              layout_net=layout)  # fmt: skip

    def export(self, path, dtype, extra=None):
        parts = (None if m is None else copy.deepcopy(m).to("cpu", dtype) for m in self._ema_parts())
        pipe = self._pipe(*parts)

        def write(tmp):
            pipe.save_pretrained(tmp, safe_serialization=True)
            (tmp / "train_info.json").write_text(json.dumps({"family": "diffusion", **(extra or {})}, indent=2))

        return atomic_dir(path, write)

    def pipeline(self):
        pipe = self._pipe(*(None if m is None else copy.deepcopy(m).eval() for m in self._ema_parts()))
        pipe.set_text_encoder(self.encoder)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.acc.device)


# ---------------------------------------------------------------------------------------------------------------
# VQGAN, stage 1: the autoencoder.


def perceptual_from_evaluator(path=None, device="cpu"):
    """A feature-matching distance on the conv activations of #4's attribute recogniser (offline, trained on Shapes):
    the mean squared difference of the activations after every SiLU, averaged over stages.

    The recogniser's features are what tells colours, shapes and sizes apart, which plain L1 (dominated by the flat
    background: the objects are 5-15% of the pixels) neglects. LPIPS' per-location unit normalisation is not used:
    on the near-flat early reconstructions it divides by near-zero activations and the gradients blew up (L1 stuck
    at 0.51 after 140 steps vs 0.05 without the term). Note: attribute accuracy and FID use the same network, so an
    autoencoder trained with this term is matched to the judge's features; the README of any bundle says so.
    """
    from t2i.metrics.networks import load_evaluator

    conv = load_evaluator(path, device=device).recognizer.backbone.conv.eval().requires_grad_(False)

    def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        conv.to(x.device)
        d, n, hx, hy = 0.0, 0, x, y
        for layer in conv:
            hx, hy = layer(hx), layer(hy)
            if isinstance(layer, torch.nn.SiLU):
                d, n = d + (hx - hy).pow(2).mean(), n + 1
        return d / max(n, 1)

    return distance


def _codebook_groups(vq, lr: float, mult: float) -> list[dict]:
    """Adam parameter groups: the codebook at lr * mult, everything else at lr."""
    book = vq.quantize.embedding.weight
    rest = [p for p in vq.parameters() if p is not book]
    return [{"params": rest, "lr": lr}, {"params": [book], "lr": lr * mult}]


class VQGANFamily(_Base):
    """Autoencoder phase (L1 + perceptual + adaptive-weighted hinge GAN + VQ) and a patch-discriminator phase."""

    trained = "vq"

    def __init__(self, family: str, model_cfg: dict, tcfg):
        from t2i.models.vqgan import CodeUsage, PatchDiscriminator, VQGANConfig, build_vqmodel
        from t2i.train import Phase

        self.family, self.t = family, tcfg
        cfg = dict(model_cfg)
        self.perceptual_net = cfg.pop("perceptual_evaluator", "default")  # path, "default", or None to disable
        self.cfg = _from_dict(VQGANConfig, cfg, "model")
        vq, disc = build_vqmodel(self.cfg), PatchDiscriminator(self.cfg.disc_channels, self.cfg.disc_layers)
        self.modules = {"vq": vq, "disc": disc}
        betas = tuple(tcfg.betas)
        self.optimizers = {
            "vq": torch.optim.Adam(_codebook_groups(vq, tcfg.lr_g, self.cfg.codebook_lr_mult), betas=betas),
            "disc": torch.optim.Adam(disc.parameters(), lr=tcfg.lr_d, betas=betas),
        }
        self.usage = CodeUsage(self.cfg.num_codes, self.cfg.revive_after)
        self.perceptual = None
        self._last_q, self._initialised = None, False
        self.phases = [Phase("G", self.g_step, "vq", 1, ["vq"]), Phase("D", self.d_step, "disc", 1, ["disc"])]

    def bind(self, accelerator, encoder, prepared):
        super().bind(accelerator, encoder, prepared)
        if self.cfg.perceptual_weight > 0 and self.perceptual_net:
            path = None if self.perceptual_net == "default" else self.perceptual_net
            self.perceptual = perceptual_from_evaluator(path, accelerator.device)

    def g_step(self, batch, step):
        from t2i.models.vqgan import autoencoder_losses, init_codebook

        x = batch["image"].to(self.acc.device)
        vq = self.acc.unwrap_model(self.p["vq"])
        if step == 0 and not self._initialised:
            init_codebook(vq, x)  # data-dependent init; a resumed run has its codebook in the checkpoint
        self._initialised = True
        disc = self.acc.unwrap_model(self.p["disc"])
        loss, logs, _, q = autoencoder_losses(vq, disc, x, self.cfg, step, self.perceptual)
        self._last_q = q
        return {**{k: torch.tensor(v) for k, v in logs.items()}, "loss": loss}

    def d_step(self, batch, step):
        from t2i.models.vqgan import discriminator_hinge_loss, vq_encode

        if step < self.cfg.disc_start:
            # Before disc_start the discriminator is idle (taming-transformers): a zero loss keeps the phase cheap.
            zero = sum(p.sum() * 0.0 for p in self.p["disc"].parameters())
            return {"loss": zero}
        x = batch["image"].to(self.acc.device)
        vq = self.acc.unwrap_model(self.p["vq"])
        with torch.no_grad():
            xrec = vq.decode(vq_encode(vq, x).quant, force_not_quantize=True).sample
        d = discriminator_hinge_loss(self.p["disc"], x, xrec)
        return {"d_hinge": d, "loss": d}

    def after_step(self, step):
        if self._last_q is not None:
            logs = self.usage.update(self.acc.unwrap_model(self.p["vq"]), self._last_q, step)
            self.last_usage = logs

    def export(self, path, dtype, extra=None):
        vq = copy.deepcopy(self.acc.unwrap_model(self.p["vq"])).to("cpu")

        def write(tmp):
            vq.save_pretrained(tmp / "vqmodel")
            info = {"family": "vqgan_autoencoder", "model": dataclasses.asdict(self.cfg), **(extra or {})}
            (tmp / "config.json").write_text(json.dumps(info, indent=2) + "\n")

        return atomic_dir(path, write)

    def pipeline(self):
        return _ReconstructionGrid(self)


class _ReconstructionGrid:
    """Sample grids for stage 1: reconstructions of real test images (an autoencoder has no captions to draw)."""

    def __init__(self, fam):
        self.fam = fam

    def __call__(self, captions, num_images_per_caption=1, seed=0, **_):
        from t2i.data.dataset import load_dataset
        from t2i.models.vqgan import vq_decode_indices, vq_encode

        d = self.fam.data_cfg
        spec = d.dataset + ":test" if d.dataset == "shapes" else d.dataset
        ds = load_dataset(spec, "test", d.size, length=len(captions) * num_images_per_caption, seed=d.seed)
        x = torch.stack([ds[i].image for i in range(len(ds))]).to(self.fam.acc.device)
        vq = self.fam.acc.unwrap_model(self.fam.p["vq"]).eval()
        with torch.no_grad():
            rec = vq_decode_indices(vq, vq_encode(vq, x).indices)
        vq.train()
        # Pairs: real, reconstruction, real, reconstruction, ...
        return torch.stack([t for pair in zip(x, rec) for t in pair]).cpu()[: len(x)]


# ---------------------------------------------------------------------------------------------------------------
# VQGAN, stage 2: the text-conditioned prior over a frozen autoencoder's codes.


class VQPriorFamily(_Base):
    """Next-code cross-entropy of the GPT-2 prior given the caption (with caption dropout for CFG).

    With model.layout_channels > 0, text -> layout -> codes as in DiffusionFamily: a LayoutNet learns each object
    word's box from the scenes' true boxes, the true layout is painted on the code grid for the prior to read, and
    sampling paints the predicted one. model.layout_from starts the LayoutNet from another export's (e.g. the
    diffusion_layout bundle's, whose predictor has already learnt the boxes)."""

    trained = "prior"
    LAYOUT_DEFAULTS = {"layout_width": 128, "layout_layers": 3, "layout_weight": 1.0, "layout_lr": 1e-3,
                       "layout_contextual": False, "layout_text_dropout": 0.0, "layout_from": None,
                       "layout_prior_lr": None}  # fmt: skip

    def __init__(self, family: str, model_cfg: dict, tcfg):
        from t2i.models.vqgan import CodePrior, latent_side, load_autoencoder
        from t2i.train import Phase

        self.family, self.t = family, tcfg
        cfg = dict(model_cfg)
        ae = cfg.pop("autoencoder", None)
        self.caption_dropout = float(cfg.pop("caption_dropout", 0.1))
        self.sampling = dict(cfg.pop("sampling", None) or {})  # the exported pipeline's default sampling settings
        self.lay = {k: cfg.pop(k, v) for k, v in self.LAYOUT_DEFAULTS.items()}
        if not ae:
            raise ValueError("model.autoencoder must name a trained VQGAN autoencoder (run folder or export)")
        if not 0.0 <= float(self.lay["layout_text_dropout"]) < 1.0:
            raise ValueError(f"layout_text_dropout must be in [0, 1), got {self.lay['layout_text_dropout']}")
        channels = int(cfg.get("layout_channels", 0))
        needs = ("layout_contextual", "layout_text_dropout", "layout_from", "layout_prior_lr")
        if channels <= 0 and any(self.lay[k] for k in needs):
            raise ValueError(f"{' / '.join(needs)} need the layout stage (model.layout_channels > 0)")
        vq = load_autoencoder(ae)
        self._codes = {}  # dataset index -> (h, w) code indices of its image
        self.autoencoder_path = str(ae)
        side = latent_side(vq)
        cfg.setdefault("num_codes", vq.config.num_vq_embeddings)
        cfg.setdefault("seq_len", side * side)
        self.prior_kwargs = cfg
        prior = CodePrior(**cfg)
        layout = None
        if channels > 0:
            from t2i.models.diffusion import LayoutNet

            lay = self.lay
            layout = LayoutNet(prior.config.text_dim, channels, int(lay["layout_width"]), int(lay["layout_layers"]),
                               contextual=bool(lay["layout_contextual"]))  # fmt: skip
        if tcfg.init_from:
            self._refuse_layout_source(layout, tcfg.init_from)
            src = self._init_from(prior, tcfg.init_from, "prior")
            if (src / "layout_net").is_dir() and not self.lay["layout_from"]:
                self._init_from(layout, tcfg.init_from, "layout_net")
            # else a fresh layout net (or layout_from's), whose map enters through zero weights: the prior is unchanged
        if self.lay["layout_from"]:
            self._init_from(layout, self.lay["layout_from"], "layout_net")
        self.frozen = {"vq": vq}
        self.modules = {"prior": prior}
        groups = [{"params": list(prior.parameters())}]
        if self.lay["layout_prior_lr"] is not None:
            # the prior's map-reading parameters (zero at the start) at their own rate, the trained prior at lr_g
            new, trained = self._split_params(prior, tuple(prior.new_parameters))
            groups = [{"params": trained}, {"params": new, "lr": float(self.lay["layout_prior_lr"])}]
        if layout is not None:
            self.modules["layout_net"] = layout
            # The painting projections learn with the prior; the predictor at its own rate, as in DiffusionFamily.
            painting, own = self._layout_params(layout, float(self.lay["layout_lr"]))
            groups[0]["params"] += painting
            groups.append(own)
        self.optimizers = {"prior": torch.optim.AdamW(groups, lr=tcfg.lr_g, betas=(0.9, 0.95), weight_decay=1e-2)}
        # One EMA over what is trained: the prior alone (so runs from before the layout resume), or prior + layout.
        self.ema = self._make_ema(prior if layout is None else torch.nn.ModuleDict(self.modules))
        self.phases = [Phase("prior", self.step, "prior", 1, list(self.modules))]
        self._grounding_cache = {}

    def step(self, batch, step):
        from t2i.models.vqgan import prior_loss, vq_encode

        idx = self._per_image(self._codes, batch, lambda x: vq_encode(self.frozen["vq"], x).indices)  # (B, h, w)
        captions = self._dropped(batch, step, self.caption_dropout)
        f = self._features(captions)
        layout, out = None, {}
        if "layout_net" in self.p:  # the true layout, painted on the code grid
            f, layout, out["layout"] = self._true_layout(f, captions, batch["attributes"], step, *idx.shape[-2:],
                                                         float(self.lay["layout_text_dropout"]))  # fmt: skip
        loss = prior_loss(self.p["prior"], idx, f.words, f.mask, layout)  # through DDP's forward: gradients sync
        out["ce"] = loss
        if "layout" in out:
            loss = loss + float(self.lay["layout_weight"]) * out["layout"]
        out["loss"] = loss
        return out

    def _ema_parts(self):
        """(prior, layout net or None) of the EMA."""
        m = self.ema.module
        if not isinstance(m, torch.nn.ModuleDict):
            return m, None
        return m["prior"], m["layout_net"]

    def _pipe(self, prior, layout=None):
        from t2i.models.vqgan import VQGANPipeline

        return VQGANPipeline(self.frozen["vq"], prior.eval(), self.data_cfg.text_encoder, self.data_cfg.max_length,
                             self.sampling, self.data_cfg.text_layer, layout)  # fmt: skip

    def export(self, path, dtype, extra=None):
        # Stored in the export dtype (fp16 by default: the bundle limit), loaded back in float32.
        pipe = self._pipe(*(None if m is None else copy.deepcopy(m).to("cpu", dtype) for m in self._ema_parts()))
        pipe.vqmodel = copy.deepcopy(self.frozen["vq"]).to("cpu", dtype)

        def write(tmp):
            pipe.save_pretrained(tmp)
            (tmp / "train_info.json").write_text(json.dumps({"family": "vqgan", **(extra or {})}, indent=2))

        return atomic_dir(path, write)

    def pipeline(self):
        pipe = self._pipe(*(None if m is None else copy.deepcopy(m) for m in self._ema_parts()))
        pipe.set_text_encoder(self.encoder)
        return pipe.to(self.acc.device)


BASELINE_FAMILIES = {"diffusion": DiffusionFamily, "vqgan": VQGANFamily, "vq_prior": VQPriorFamily}
