"""Inference for every family: `load_pipeline(path)(captions, num_images_per_caption, seed)` -> images in [-1, 1].

A GAN checkpoint folder holds `config.json` (family, resolution, model config, text encoder) and
`generator.safetensors` (the EMA generator's weights, often fp16). A run folder resolves to its latest export
(`runs/<name>-NNN/export`). VQGAN and diffusion folders are delegated to their own pipelines (#5).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

GAN_FAMILIES = ("stackgan", "attngan")
_ENCODERS: dict = {}  # (name, max_length, layer) -> TextEncoder, shared by every pipeline in the process


def shared_text_encoder(name_or_path: str | None = None, max_length: int = 32, layer: int = -1):
    """One frozen TextEncoder per (name, max_length, word-feature layer) per process, with the on-disk cache."""
    from t2i.text import TextEncoder, default_cache_dir

    key = (name_or_path, max_length, int(layer))
    if key not in _ENCODERS:
        _ENCODERS[key] = TextEncoder(name_or_path, max_length=max_length, cache_dir=default_cache_dir(), layer=layer)
    return _ENCODERS[key]


def build_generator(family: str, model_cfg: dict):
    """(family, model config dict) -> (generator module, config dataclass)."""
    if family == "stackgan":
        from t2i.models.stackgan import StackGANConfig, StackGANGenerator

        cfg = StackGANConfig(**{k: v for k, v in model_cfg.items() if k != "d_stage_resolutions"})
        return StackGANGenerator(cfg), cfg
    if family == "attngan":
        from t2i.models.attngan import AttnGANConfig, AttnGANGenerator

        cfg = AttnGANConfig(**model_cfg)
        return AttnGANGenerator(cfg), cfg
    raise ValueError(f"unknown GAN family {family!r}; expected one of {GAN_FAMILIES}")


class T2IPipeline:
    """StackGAN/AttnGAN inference: captions -> text features -> noise + generator -> final-stage images."""

    def __init__(self, family: str, generator: torch.nn.Module, model_cfg, text_encoder_name=None, max_length=32,
                 text_encoder=None, text_layer: int = -1):  # fmt: skip
        self._encoder = text_encoder  # an already loaded TextEncoder (training), else the shared one on first use
        self.family = family
        self.generator = generator.eval().float()
        self.model_cfg = model_cfg
        self.resolution = int(model_cfg.resolution)
        self.z_dim = int(model_cfg.z_dim)
        self.text_encoder_name = text_encoder_name
        self.max_length = max_length
        self.text_layer = int(text_layer)
        self.device = torch.device("cpu")
        # The truncation trick: every noise the generator draws (z and CA's eps) is scaled by this. 1 = the training
        # distribution; lower trades diversity for the typical image of each caption; 0 = one image per caption.
        self.truncation = 1.0

    @property
    def text_encoder(self):
        if self._encoder is None:
            self._encoder = shared_text_encoder(self.text_encoder_name, self.max_length, self.text_layer)
        return self._encoder

    def to(self, device) -> T2IPipeline:
        self.device = torch.device(device)
        self.generator.to(self.device)
        return self

    @torch.no_grad()
    def generate(self, captions: list[str], num_images_per_caption: int = 1, seed: int = 0, batch_size: int = 64):
        """-> (images (N*k, 3, R, R), attention maps per refinement stage [(N*k, T, H, W)] (AttnGAN) or [])."""
        if isinstance(captions, str):
            captions = [captions]
        if not captions or num_images_per_caption < 1:
            raise ValueError("need at least one caption and num_images_per_caption >= 1")
        feats = self.text_encoder.encode(list(captions))
        k = num_images_per_caption
        idx = torch.arange(len(captions)).repeat_interleave(k)  # caption-major order
        n = len(idx)
        # All noise drawn up front from one seeded generator, so batch_size never changes the images.
        gen = torch.Generator().manual_seed(int(seed))
        if not self.truncation >= 0:
            raise ValueError(f"truncation must be >= 0, got {self.truncation}")
        psi = float(self.truncation)
        z = torch.randn(n, self.z_dim, generator=gen) * psi
        cdim = int(self.model_cfg.cond_dim)
        eps = [torch.randn(n, cdim, generator=gen) * psi for _ in range(self.generator.num_ca)]  # CA noise per image
        images, maps = [], []
        for s in range(0, n, batch_size):
            b = idx[s : s + batch_size]
            f = feats[b].to(self.device)
            e = [x[s : s + batch_size].to(self.device) for x in eps]
            out = self.generator(z[s : s + batch_size].to(self.device), f.sentence, f.words, f.mask, ca_eps=e)
            images.append(out.images[-1].float().clamp(-1, 1).cpu())
            maps.append([a.float().cpu() for a in out.attention])
        attention = [torch.cat([_pad_t(m[i], feats.mask.shape[1]) for m in maps]) for i in range(len(maps[0]))]
        return torch.cat(images), attention

    def __call__(self, captions, num_images_per_caption: int = 1, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
        return self.generate(captions, num_images_per_caption, seed, batch_size)[0]

    def tokens(self, caption: str) -> list[str]:
        """The tokens the attention maps are indexed by (incl. [CLS]/[SEP])."""
        tok = self.text_encoder.tokenizer(caption, truncation=True, max_length=self.max_length)
        return self.text_encoder.tokenizer.convert_ids_to_tokens(tok["input_ids"])

    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float16, extra: dict | None = None) -> Path:
        return export_generator(path, self.family, self.generator, self.model_cfg, self.text_encoder_name,
                                self.max_length, dtype, extra, text_layer=self.text_layer)  # fmt: skip


def _pad_t(a: torch.Tensor, T: int) -> torch.Tensor:
    """Attention maps of a batch padded along the word axis to the full caption set's T."""
    return torch.nn.functional.pad(a, (0, 0, 0, 0, 0, T - a.shape[1]))


def export_generator(path, family, generator, model_cfg, text_encoder_name=None, max_length=32,
                     dtype=torch.float16, extra: dict | None = None, *, text_layer: int = -1) -> Path:  # fmt: skip
    """Write config.json + generator.safetensors into `path` atomically (a tmp folder, then renamed into place)."""

    def write(tmp: Path) -> None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu()
                 for k, v in generator.state_dict().items()}  # fmt: skip
        save_file(state, str(tmp / "generator.safetensors"))
        cfg = {"family": family, "resolution": int(model_cfg.resolution), "model": asdict(model_cfg),
               "text_encoder": {"name_or_path": text_encoder_name, "max_length": max_length, "layer": int(text_layer)},
               "dtype": str(dtype).replace("torch.", ""), **(extra or {})}  # fmt: skip
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    return atomic_dir(path, write)


def atomic_dir(path, write) -> Path:
    """write(tmp_dir) into a tmp folder beside `path`, then swap it into place: a killed export never leaves a torn
    folder, and readers see the old folder or the new one."""
    import os
    import shutil

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as is; a run folder -> its export/ folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint or run folder at {p}")
    for cand in (p, p / "export"):
        if (
            (cand / "config.json").is_file()
            or (cand / "pipeline.json").is_file()
            or (cand / "model_index.json").is_file()
        ):
            return cand
    raise FileNotFoundError(f"{p} holds no config.json (checkpoint folder) nor export/config.json (run folder)")


def load_pipeline(path: str | Path, device=None):
    """A checkpoint folder (config.json + *.safetensors) or a run folder -> its inference pipeline."""
    p = resolve_checkpoint(path)
    if (p / "pipeline.json").is_file():  # VQGAN (#5)
        from t2i.models.vqgan import VQGANPipeline

        pipe = VQGANPipeline.from_pretrained(p)
        return pipe.to(device) if device is not None else pipe
    if (p / "model_index.json").is_file():  # diffusion (#5)
        from t2i.models import diffusion

        # Weights are stored in fp16 to stay small; sampling runs in float32 (fp16 convolutions crawl on a CPU).
        pipe = diffusion.T2IDiffusionPipeline.from_pretrained(p).to(torch.float32)
        pipe.set_progress_bar_config(disable=True)  # callers (eval, apps, sample) show their own progress
        return pipe.to(device) if device is not None else pipe
    cfg = json.loads((p / "config.json").read_text())
    family = cfg.get("family")
    if family not in GAN_FAMILIES:
        raise ValueError(f"{p}/config.json: family {family!r} has no generator pipeline (expected {GAN_FAMILIES})")
    weights = p / "generator.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{p} has a config.json but no generator.safetensors")
    # Exports written before sentence_norm existed (it then did not exist in the model) lack the key: keep them exact.
    G, mcfg = build_generator(family, {"sentence_norm": False, **cfg["model"]})
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    missing, unexpected = G.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights}: weights do not fit the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    te = cfg.get("text_encoder", {})
    pipe = T2IPipeline(
        family, G, mcfg, te.get("name_or_path"), int(te.get("max_length", 32)), text_layer=int(te.get("layer", -1))
    )  # exports from before the option: the last layer
    return pipe.to(device) if device is not None else pipe
