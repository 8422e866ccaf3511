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


def _step_generator(seed: int, step: int, rank: int, salt: int) -> torch.Generator:
    # Integer tuples hash identically in every process, so resumed and multi-process runs draw the same noise.
    return torch.Generator().manual_seed(hash((seed, step, rank, salt)) % 2**62)


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

        return drop_captions(batch["captions"], p, _step_generator(self.t.seed, step, self.acc.process_index, 7))

    def _make_ema(self, module):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(self.t.ema_decay), use_buffers=True)
        return ema.requires_grad_(False)

    def after_step(self, step):
        if self.ema is not None:
            self.ema.update_parameters(self.acc.unwrap_model(self.p[self.trained]))

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
        from t2i.models.diffusion import DiffusionConfig, build_noise_scheduler, build_unet
        from t2i.train import Phase

        self.family, self.t = family, tcfg
        self.cfg = _from_dict(DiffusionConfig, model_cfg, "model")
        unet = build_unet(self.cfg)
        self.noise_scheduler = build_noise_scheduler(self.cfg)
        self.modules = {"unet": unet}
        self.optimizers = {"unet": torch.optim.AdamW(unet.parameters(), lr=tcfg.lr_g, weight_decay=1e-2)}
        self.ema = self._make_ema(unet)
        self.phases = [Phase("diffusion", self.step, "unet", 1, ["unet"])]

    def step(self, batch, step):
        from t2i.models.diffusion import diffusion_loss

        f = self._features(self._dropped(batch, step, self.cfg.caption_dropout))
        x0 = batch["image"].to(self.acc.device)
        g = _step_generator(self.t.seed, step, self.acc.process_index, 3)
        loss = diffusion_loss(self.p["unet"], self.noise_scheduler, x0, f.words, f.mask, g)
        return {"mse": loss, "loss": loss}

    def _pipe(self, unet):
        from t2i.models.diffusion import build_pipeline

        return build_pipeline(self.cfg, self.data_cfg.text_encoder, self.data_cfg.max_length, unet=unet)

    def export(self, path, dtype, extra=None):
        unet = copy.deepcopy(self.ema.module).to("cpu", dtype)
        pipe = self._pipe(unet)

        def write(tmp):
            pipe.save_pretrained(tmp, safe_serialization=True)
            (tmp / "train_info.json").write_text(json.dumps({"family": "diffusion", **(extra or {})}, indent=2))

        return atomic_dir(path, write)

    def pipeline(self):
        pipe = self._pipe(copy.deepcopy(self.ema.module).eval())
        pipe.set_text_encoder(self.encoder)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.acc.device)


# ---------------------------------------------------------------------------------------------------------------
# VQGAN, stage 1: the autoencoder.


def perceptual_from_evaluator(path=None, device="cpu"):
    """An LPIPS-like distance on the conv activations of #4's attribute recognizer (offline, trained on Shapes).

    Each stage's activations are unit-normalised over channels, squared differences are averaged over space and
    summed over stages. Note: FID/KID use the same network's final features, so report FID with that in mind.
    """
    from t2i.metrics.networks import load_evaluator

    conv = load_evaluator(path, device=device).recognizer.backbone.conv.eval().requires_grad_(False)

    def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        conv.to(x.device)
        d, hx, hy = 0.0, x, y
        for layer in conv:
            hx, hy = layer(hx), layer(hy)
            if isinstance(layer, torch.nn.SiLU):
                nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-8)
                ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-8)
                d = d + (nx - ny).pow(2).sum(1).mean()
        return d

    return distance


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
            "vq": torch.optim.Adam(vq.parameters(), lr=tcfg.lr_g, betas=betas),
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
    """Next-code cross-entropy of the GPT-2 prior given the caption (with caption dropout for CFG)."""

    trained = "prior"

    def __init__(self, family: str, model_cfg: dict, tcfg):
        from diffusers import VQModel

        from t2i.models.vqgan import CodePrior
        from t2i.pipelines import resolve_checkpoint
        from t2i.train import Phase

        self.family, self.t = family, tcfg
        cfg = dict(model_cfg)
        ae = cfg.pop("autoencoder", None)
        self.caption_dropout = float(cfg.pop("caption_dropout", 0.1))
        if not ae:
            raise ValueError("model.autoencoder must name a trained VQGAN autoencoder (run folder or export)")
        root = resolve_checkpoint(ae)
        vq_dir = root / "vqmodel"
        if not vq_dir.is_dir():
            raise ValueError(f"{root} holds no vqmodel/ folder: train configs/t2i/shapes_vqgan.yaml first")
        vq = VQModel.from_pretrained(vq_dir, local_files_only=True).eval().requires_grad_(False)
        vq.quantize.legacy = False
        self.autoencoder_path = str(ae)
        side = vq.config.sample_size // 2 ** (len(vq.config.block_out_channels) - 1)
        cfg.setdefault("num_codes", vq.config.num_vq_embeddings)
        cfg.setdefault("seq_len", side * side)
        self.prior_kwargs = cfg
        prior = CodePrior(**cfg)
        self.frozen = {"vq": vq}
        self.modules = {"prior": prior}
        self.optimizers = {
            "prior": torch.optim.AdamW(prior.parameters(), lr=tcfg.lr_g, betas=(0.9, 0.95), weight_decay=1e-2)
        }
        self.ema = self._make_ema(prior)
        self.phases = [Phase("prior", self.step, "prior", 1, ["prior"])]

    def step(self, batch, step):
        from t2i.models.vqgan import prior_loss, vq_encode

        with torch.no_grad():
            idx = vq_encode(self.frozen["vq"], batch["image"].to(self.acc.device)).indices  # (B, h, w)
        f = self._features(self._dropped(batch, step, self.caption_dropout))
        loss = prior_loss(self.p["prior"], idx, f.words, f.mask)  # through DDP's forward: gradients sync
        return {"ce": loss, "loss": loss}

    def _pipe(self, prior):
        from t2i.models.vqgan import VQGANPipeline

        return VQGANPipeline(self.frozen["vq"], prior.eval(), self.data_cfg.text_encoder, self.data_cfg.max_length)

    def export(self, path, dtype, extra=None):
        pipe = self._pipe(copy.deepcopy(self.ema.module).to("cpu"))

        def write(tmp):
            pipe.vqmodel.to("cpu")
            pipe.save_pretrained(tmp)
            (tmp / "train_info.json").write_text(json.dumps({"family": "vqgan", **(extra or {})}, indent=2))

        out = atomic_dir(path, write)
        self.frozen["vq"].to(self.acc.device)
        return out

    def pipeline(self):
        pipe = self._pipe(copy.deepcopy(self.ema.module))
        pipe.set_text_encoder(self.encoder)
        return pipe.to(self.acc.device)


BASELINE_FAMILIES = {"diffusion": DiffusionFamily, "vqgan": VQGANFamily, "vq_prior": VQPriorFamily}
