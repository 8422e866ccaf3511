"""The mmgan Gradio app: type a caption and compare StackGAN, AttnGAN, VQGAN and diffusion side by side.

Thin by design: every tab calls `t2i.pipelines.load_pipeline(path)(captions, k, seed)` or the textgan checkpoint
API and only validates input and lays out pictures. Bad input raises `gr.Error` (a message in the page and an error
for API clients), never a stack trace.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = Path(os.environ.get("MMGAN_CHECKPOINTS", REPO / "checkpoints"))
FAMILIES = {"StackGAN": "stackgan", "AttnGAN": "attngan", "VQGAN": "vqgan", "Diffusion": "diffusion",
            "Diffusion + layout": "diffusion_layout", "VQGAN + layout": "vqgan_layout"}  # fmt: skip
TEXTGAN = {"MLE (COCO captions)": "coco_mle", "SeqGAN (COCO captions)": "coco_seqgan",
           "MLE (oracle)": "oracle_mle", "SeqGAN (oracle)": "oracle_seqgan"}  # fmt: skip
MAX_CAPTION_CHARS = 300
MAX_IMAGES = 16
EXAMPLES = [
    "a small red circle in the top left corner",
    "a big blue square to the left of a tiny yellow star",
    "there is a large green heart at the bottom on a white background",
    "a little purple triangle above a huge orange cross",
]


class AppError(ValueError):
    """Bad input from the page or an API client; shown as a message, never a traceback."""


def _error(msg: str):
    """gr.Error when gradio is there (the page shows it, API clients get it); AppError otherwise."""
    try:
        import gradio as gr

        return gr.Error(msg)
    except ImportError:  # pragma: no cover - gradio is a dependency
        return AppError(msg)


class ModelZoo:
    """Pipelines by display name, loaded on first use and kept; a user may add any run or checkpoint folder."""

    def __init__(self, paths: dict[str, str | Path] | None = None, root: Path = CHECKPOINTS / "shapes64"):
        if paths is None:
            paths = {name: root / fam for name, fam in FAMILIES.items() if (root / fam).exists()}
        self.paths = {k: Path(v) if isinstance(v, (str, Path)) else v for k, v in paths.items()}
        self._loaded: dict = {}
        self._lock = threading.Lock()  # concurrent requests for a model not loaded yet load it once

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def get(self, name: str):
        with self._lock:
            return self._get(name)

    def _get(self, name: str):
        if name in self._loaded:
            return self._loaded[name]
        if name not in self.paths:
            raise _error(f"unknown model {name!r}; choose from {', '.join(self.names) or '(none installed)'}")
        spec = self.paths[name]
        if not isinstance(spec, Path):  # an already built pipeline object (tests, notebooks)
            self._loaded[name] = spec
            return spec
        pipe = _load_folder(spec)
        # Load the (shared) text encoder now, under the lock: first use from many request threads at once would
        # race in transformers' lazy imports, and the first request's latency would include the encoder's load.
        _ = pipe.text_encoder
        self._loaded[name] = pipe
        return pipe


def _load_folder(path: Path):
    from t2i.pipelines import load_pipeline

    try:
        return load_pipeline(path)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise _error(f"{path} holds no model: {e}") from e


def check_caption(caption) -> str:
    caption = (caption or "").strip()
    if not caption:
        raise _error("the caption is empty: type what the image should show")
    if len(caption) > MAX_CAPTION_CHARS:
        raise _error(f"the caption has {len(caption)} characters; the limit is {MAX_CAPTION_CHARS}")
    return caption


def check_count(n, limit: int = MAX_IMAGES, what: str = "images") -> int:
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise _error(f"number of {what} must be a whole number, got {n!r}") from None
    if not 1 <= n <= limit:
        raise _error(f"number of {what} must be between 1 and {limit}, got {n}")
    return n


def to_pil(images) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> PIL images, upscaled to at least 192 px so small samples are visible."""
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in arr:
        img = Image.fromarray(a)
        if img.width < 192:
            img = img.resize((192, 192), Image.NEAREST)
        out.append(img)
    return out


def run_pipeline(pipe, caption: str, n: int, seed: int, steps: int = 25, guidance: float = 3.0):
    """Call a pipeline with the knobs its family understands -> (PIL images, seconds)."""
    kwargs = {}
    family = getattr(pipe, "family", "")
    if family == "diffusion":
        kwargs = {"num_inference_steps": int(steps), "guidance_scale": float(guidance)}
    elif family == "vqgan":
        kwargs = {"guidance_scale": float(guidance)}
    t0 = time.perf_counter()
    images = pipe([caption], num_images_per_caption=n, seed=int(seed), **kwargs)
    return to_pil(images), time.perf_counter() - t0


class DemoApp:
    """Handlers behind every tab; plain methods so tests call them without a server."""

    def __init__(self, zoo: ModelZoo | None = None, textgan_root: Path = CHECKPOINTS / "textgan"):
        self.zoo = zoo or ModelZoo()
        self.textgan_paths = {k: textgan_root / v for k, v in TEXTGAN.items() if (textgan_root / v).exists()}

    # --- Text to image -------------------------------------------------------------------------------------
    def generate(self, caption, models, num_images=4, seed=0, steps=25, guidance=3.0, custom_path=""):
        """-> one list of (image, label) per slot in self.zoo.names (+ the custom slot), and a status line."""
        caption = check_caption(caption)
        n = check_count(num_images)
        models = [models] if isinstance(models, str) else list(models or [])
        custom_path = (custom_path or "").strip()
        if custom_path:
            if not Path(custom_path).exists():
                raise _error(f"{custom_path}: no such run or checkpoint folder")
            self.zoo.paths.setdefault(f"custom:{custom_path}", Path(custom_path))
            models.append(f"custom:{custom_path}")
        if not models:
            raise _error("choose at least one model")
        for m in models:
            if m not in self.zoo.paths:
                raise _error(f"unknown model {m!r}; choose from {', '.join(self.zoo.names) or '(none installed)'}")
        results, status = {}, []
        for m in models:
            images, dt = run_pipeline(self.zoo.get(m), caption, n, seed, steps, guidance)
            results[m] = [(img, f"{m} #{i + 1}") for i, img in enumerate(images)]
            status.append(f"{m}: {dt * 1000:.0f} ms ({n / dt:.1f} images/s)")
        return results, " · ".join(status)

    # --- Attention -----------------------------------------------------------------------------------------
    def attention(self, caption, seed=0, model="AttnGAN"):
        """AttnGAN's per-word attention maps over the image -> [(image, label)] (the image first)."""
        caption = check_caption(caption)
        pipe = self.zoo.get(model)
        if not hasattr(pipe, "generate") or getattr(pipe, "family", "") != "attngan":
            raise _error(f"{model} has no word attention (only AttnGAN does)")
        images, attn = pipe.generate([caption], 1, int(seed))
        if not attn:
            raise _error(f"{model} returned no attention maps")
        tokens = pipe.tokens(caption)
        img = to_pil(images)[0]
        maps = attn[-1][0]  # last refinement stage, (T, h, w)
        out = [(img, "generated image")]
        for t, tok in enumerate(tokens[: maps.shape[0]]):
            if tok in ("[CLS]", "[SEP]", "[PAD]"):
                continue
            out.append((overlay(img, maps[t].numpy()), tok))
        return out

    # --- Interpolate ---------------------------------------------------------------------------------------
    def interpolate(self, caption_a, caption_b, seed=0, steps=6, model="StackGAN", seed_b=None):
        """Images along a path between two captions (same noise) or, with no second caption, two seeds."""
        caption_a = check_caption(caption_a)
        steps = check_count(steps, 12, "interpolation steps")
        pipe = self.zoo.get(model)
        if getattr(pipe, "family", "") not in ("stackgan", "attngan"):
            raise _error(f"interpolation needs a GAN (StackGAN or AttnGAN), not {model}")
        import torch

        from t2i.text import TextFeatures

        enc = pipe.text_encoder
        fa = enc.encode([caption_a])
        caption_b = (caption_b or "").strip()
        fb = enc.encode([check_caption(caption_b)]) if caption_b else fa
        T = max(fa.words.shape[1], fb.words.shape[1])
        pad = lambda f: torch.nn.functional.pad(f.words, (0, 0, 0, T - f.words.shape[1]))  # noqa: E731
        mask = torch.nn.functional.pad(fa.mask, (0, T - fa.mask.shape[1])) | torch.nn.functional.pad(
            fb.mask, (0, T - fb.mask.shape[1])
        )
        za = torch.randn(1, pipe.z_dim, generator=torch.Generator().manual_seed(int(seed)))
        zb = (
            za
            if caption_b
            else torch.randn(1, pipe.z_dim, generator=torch.Generator().manual_seed(int(seed_b or seed + 1)))
        )
        out = []
        for i, a in enumerate(np.linspace(0, 1, steps)):
            words = (1 - a) * pad(fa) + a * pad(fb)
            sent = torch.nn.functional.normalize((1 - a) * fa.sentence + a * fb.sentence, dim=-1)
            z = (1 - a) * za + a * zb
            f = TextFeatures(words, mask, sent).to(pipe.device)
            with torch.no_grad():
                g = torch.Generator(device=pipe.device).manual_seed(int(seed))
                res = pipe.generator(z.to(pipe.device), f.sentence, f.words, f.mask, generator=g)
            out.append((to_pil(res.images[-1])[0], f"{i + 1}/{steps}: {a:.2f}"))
        return out

    # --- Text GAN ------------------------------------------------------------------------------------------
    def sentences(self, model, n=10, temperature=1.0, seed=0) -> str:
        """Sentences from a bundled MLE or SeqGAN text generator."""
        import torch

        from textgan.checkpoint import load_generator
        from textgan.data import decode_batch

        if model not in self.textgan_paths:
            raise _error(f"unknown text model {model!r}; choose from {', '.join(self.textgan_paths) or '(none)'}")
        n = check_count(n, 50, "sentences")
        temperature = float(temperature)
        if not 0.05 <= temperature <= 3.0:
            raise _error(f"temperature must be between 0.05 and 3, got {temperature}")
        gen, _, tok = load_generator(self.textgan_paths[model])
        seqs = gen.sample(n, temperature=temperature, generator=torch.Generator().manual_seed(int(seed)))
        lines = decode_batch(tok, seqs) if tok is not None else [" ".join(map(str, s)) for s in seqs.tolist()]
        return "\n".join(lines)


def overlay(img: Image.Image, attn: np.ndarray) -> Image.Image:
    """Blend a (h, w) attention map, upsampled and normalised, as a red heat map over the image."""
    a = attn - attn.min()
    a = a / (a.max() + 1e-8)
    heat = Image.fromarray((a * 255).astype(np.uint8)).resize(img.size, Image.BILINEAR)
    h = np.asarray(heat, dtype=np.float32)[..., None] / 255.0
    base = np.asarray(img.convert("RGB"), dtype=np.float32)
    red = np.array([255.0, 40.0, 40.0])
    return Image.fromarray((base * (1 - 0.6 * h) + red * 0.6 * h).clip(0, 255).astype(np.uint8))
