"""Evaluation networks trained on the dataset itself: an attribute recognizer and an image-text matcher.

No Inception, CLIP or LPIPS weights can be downloaded here, so Shapes is judged by two small CNNs trained on real
Shapes images (`python -m t2i.metrics.train_evaluator configs/t2i/shapes_evaluator.yaml`):

- `AttributeRecognizer`: per cell of the 3x3 grid, is there an object, and its shape, colour and size. Its 256-d
  penultimate feature (`.features`) is the feature space of our FID/KID and of `diversity`.
- `ImageTextMatcher`: a CLIP-style dual encoder (image CNN, MLP over the frozen MiniLM sentence feature) trained
  with InfoNCE; it ranks captions for R-precision. It is separate code and weights from any DAMSM used in training,
  so a model is never scored by the network it was trained against.

Both are saved together in one folder: `config.json` + `recognizer.safetensors` + `matcher.safetensors`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from t2i.data.shapes import COLORS, POSITIONS, SHAPES, SIZES

NUM_CELLS = len(POSITIONS)  # 9, row-major 3x3
# Per-cell logits layout: [occupancy | shape (6) | colour (8) | size (2)].
CELL_LOGITS = 1 + len(SHAPES) + len(COLORS) + len(SIZES)
DEFAULT_EVALUATOR = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes64" / "evaluator"


@dataclass
class EvaluatorConfig:
    """Architecture of both evaluation networks (saved as config.json next to the weights)."""

    resolution: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 128)  # one stride-2 stage each: 64 -> 32 -> 16 -> 8 -> 4
    feature_dim: int = 256  # recognizer penultimate feature = the FID/KID/diversity feature space
    embed_dim: int = 128  # matcher joint embedding
    text_dim: int = 384  # MiniLM sentence feature
    text_encoder: str = "all-MiniLM-L6-v2"
    text_max_length: int = 32
    dataset: str = "shapes"
    # Which network's standardised penultimate feature FID/KID/diversity use: the attribute recognizer (Shapes) or,
    # for datasets without attributes, the matcher's image encoder (trained on that dataset's image-caption pairs).
    feature_network: str = "recognizer"
    # Filled by training: what the networks scored on held-out real images, and how they were made.
    metrics: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if self.resolution % 2 ** len(self.channels):
            raise ValueError(f"resolution {self.resolution} must be divisible by 2**{len(self.channels)}")


class ConvBackbone(nn.Module):
    """Stride-2 conv stages with GroupNorm: (B, 3, R, R) in [-1, 1] -> (B, feature_dim)."""

    def __init__(self, cfg: EvaluatorConfig):
        super().__init__()
        layers, c_in = [], 3
        for c in cfg.channels:
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                nn.GroupNorm(8, c),
                nn.SiLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.GroupNorm(8, c),
                nn.SiLU(),
            ]
            c_in = c
        self.conv = nn.Sequential(*layers)
        side = cfg.resolution // 2 ** len(cfg.channels)
        # Flatten (not pool): the head must know *where* things are, positions are part of the attributes.
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, cfg.feature_dim), nn.SiLU())
        self.resolution = cfg.resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            raise ValueError(
                f"the evaluator was trained on {self.resolution}x{self.resolution} images, got "
                f"{x.shape[-2]}x{x.shape[-1]}"
            )
        return self.fc(self.conv(x))  # (B, feature_dim)


@dataclass
class CellPrediction:
    """Recognizer output decoded per cell: occupancy prob (B, 9) and class indices (B, 9) for shape/colour/size."""

    occupancy: torch.Tensor
    shape: torch.Tensor
    color: torch.Tensor
    size: torch.Tensor


class AttributeRecognizer(nn.Module):
    """Image -> per-cell logits (B, 9, 17) for occupancy, shape, colour and size; `.features` gives (B, 256)."""

    def __init__(self, cfg: EvaluatorConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = ConvBackbone(cfg)
        self.head = nn.Linear(cfg.feature_dim, NUM_CELLS * CELL_LOGITS)
        # Per-dimension mean/std of the features on real train images (set by `calibrate_features`): FID/KID and
        # diversity see standardised features, so every dimension weighs alike and KID's kernel is well scaled.
        self.register_buffer("feature_mean", torch.zeros(cfg.feature_dim))
        self.register_buffer("feature_std", torch.ones(cfg.feature_dim))

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, D)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return (self.backbone(x) - self.feature_mean) / self.feature_std  # (B, D), standardised

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).view(-1, NUM_CELLS, CELL_LOGITS)  # (B, 9, 17)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> CellPrediction:
        logits = self(x)
        return decode_cells(logits)


@torch.no_grad()
def calibrate_features(net: nn.Module, images: torch.Tensor, batch_size: int = 256) -> None:
    """Set a network's feature standardisation from real images (B, 3, R, R) in [-1, 1]."""
    f = torch.cat([net.raw_features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    net.feature_mean.copy_(f.mean(0))
    net.feature_std.copy_(f.std(0).clamp(min=1e-3))


def decode_cells(logits: torch.Tensor) -> CellPrediction:
    """(B, 9, 17) logits -> CellPrediction (probabilities / argmax indices)."""
    ns, nc = len(SHAPES), len(COLORS)
    return CellPrediction(
        occupancy=torch.sigmoid(logits[..., 0]),
        shape=logits[..., 1 : 1 + ns].argmax(-1),
        color=logits[..., 1 + ns : 1 + ns + nc].argmax(-1),
        size=logits[..., 1 + ns + nc :].argmax(-1),
    )


def cell_loss(logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """BCE on occupancy of every cell + CE on shape/colour/size of occupied cells (targets -100 elsewhere)."""
    ns, nc = len(SHAPES), len(COLORS)
    occ = F.binary_cross_entropy_with_logits(logits[..., 0], targets["occupancy"].float())
    ce = sum(
        F.cross_entropy(logits[..., a:b].reshape(-1, b - a), targets[k].reshape(-1), ignore_index=-100)
        for k, a, b in (("shape", 1, 1 + ns), ("color", 1 + ns, 1 + ns + nc), ("size", 1 + ns + nc, CELL_LOGITS))
    )
    return occ + ce


def cell_targets(attributes: list[dict]) -> dict[str, torch.Tensor]:
    """Ground-truth attribute dicts -> per-cell targets (B, 9): occupancy 0/1 and class indices (-100 = empty)."""
    B = len(attributes)
    t = {k: torch.full((B, NUM_CELLS), -100, dtype=torch.long) for k in ("shape", "color", "size")}
    t["occupancy"] = torch.zeros(B, NUM_CELLS, dtype=torch.long)
    colors = list(COLORS)
    for i, a in enumerate(attributes):
        for o in a["objects"]:
            c = POSITIONS.index(o["position"])
            t["occupancy"][i, c] = 1
            t["shape"][i, c] = SHAPES.index(o["shape"])
            t["color"][i, c] = colors.index(o["color"])
            t["size"][i, c] = SIZES.index(o["size"])
    return t


class ImageTextMatcher(nn.Module):
    """CLIP-style dual encoder: image CNN and an MLP over the sentence feature into one L2-normalised space."""

    def __init__(self, cfg: EvaluatorConfig):
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ConvBackbone(cfg)
        self.image_proj = nn.Linear(cfg.feature_dim, cfg.embed_dim)
        self.text_proj = nn.Sequential(
            nn.Linear(cfg.text_dim, 512), nn.SiLU(), nn.Linear(512, 512), nn.SiLU(), nn.Linear(512, cfg.embed_dim)
        )
        self.logit_scale = nn.Parameter(torch.tensor(2.6593))  # log(1 / 0.07), CLIP's initial temperature
        # Standardisation of the image encoder's feature, used when it is the FID/KID feature network.
        self.register_buffer("feature_mean", torch.zeros(cfg.feature_dim))
        self.register_buffer("feature_std", torch.ones(cfg.feature_dim))

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(x)  # (B, D)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return (self.image_encoder(x) - self.feature_mean) / self.feature_std  # (B, D), standardised

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.image_encoder(x)), dim=-1)  # (B, E)

    def embed_text(self, sentence: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(sentence), dim=-1)  # (B, E)

    def forward(self, images: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE loss of a batch of matching (image, caption) pairs."""
        img, txt = self.embed_images(images), self.embed_text(sentence)
        logits = self.logit_scale.exp().clamp(max=100) * img @ txt.t()  # (B, B)
        labels = torch.arange(len(img), device=img.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


@dataclass
class Evaluator:
    """The loaded evaluation networks of one dataset and resolution."""

    config: EvaluatorConfig
    recognizer: AttributeRecognizer
    matcher: ImageTextMatcher
    path: Path | None = None

    def to(self, device) -> Evaluator:
        self.recognizer.to(device)
        self.matcher.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.recognizer.parameters()).device

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, D): the standardised feature FID/KID/diversity are computed in."""
        net = self.matcher if self.config.feature_network == "matcher" else self.recognizer
        return net.features(x)


def save_evaluator(ev: Evaluator, path: str | Path, half: bool = True) -> Path:
    """Write config.json + recognizer/matcher safetensors atomically (tmp + os.replace); fp16 keeps it small."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    for name, net in (("recognizer", ev.recognizer), ("matcher", ev.matcher)):
        sd = {
            k: (v.half() if half and v.is_floating_point() and not k.startswith("feature_") else v).contiguous()
            for k, v in net.state_dict().items()
        }
        tmp = out / f"{name}.safetensors.tmp"
        save_file(sd, str(tmp))
        os.replace(tmp, out / f"{name}.safetensors")
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(asdict(ev.config), indent=2) + "\n")
    os.replace(tmp, out / "config.json")
    return out


def load_evaluator(path: str | Path | None = None, device=None) -> Evaluator:
    """Load an evaluator folder (default: the bundled Shapes 64x64 one) in eval mode, fp32."""
    p = Path(path) if path is not None else DEFAULT_EVALUATOR
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"no evaluator at {p} (expected config.json + recognizer.safetensors + matcher.safetensors); train one "
            "with `python -m t2i.metrics.train_evaluator configs/t2i/shapes_evaluator.yaml`"
        )
    raw = json.loads((p / "config.json").read_text())
    known = EvaluatorConfig.__dataclass_fields__
    cfg = EvaluatorConfig(**{k: v for k, v in raw.items() if k in known})
    rec, mat = AttributeRecognizer(cfg), ImageTextMatcher(cfg)
    for name, net in (("recognizer", rec), ("matcher", mat)):
        f = p / f"{name}.safetensors"
        if not f.is_file():
            raise FileNotFoundError(f"evaluator {p} lacks {f.name}")
        sd = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(f)).items()}
        missing, unexpected = net.load_state_dict(sd, strict=False)
        # Older files have no feature standardisation: identity (mean 0, std 1) is the right default.
        bad = [k for k in missing if k not in ("feature_mean", "feature_std")] + list(unexpected)
        if bad:
            raise ValueError(f"evaluator {f} does not match its config.json: keys {bad[:5]}")
        net.eval().requires_grad_(False)
    ev = Evaluator(cfg, rec, mat, p)
    return ev.to(device) if device is not None else ev
