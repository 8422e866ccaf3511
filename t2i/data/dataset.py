"""CaptionDataset: images as tensors in [-1, 1] at a chosen size with their captions, from any supported layout.

`load_dataset("shapes")` draws Shapes on the fly; `load_dataset(PATH)` reads a folder in one of the layouts of
`t2i.data.formats`. Unreadable images are skipped, counted and named in a warning; a dataset with nothing usable
left is an error.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from t2i.data.formats import CaptionRecord, DatasetFormatError, read_dataset
from t2i.data.shapes import ShapesConfig, make_sample


class DatasetWarning(UserWarning):
    """Something in a dataset was skipped; the message names it."""


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W) in [-1, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)  # (H, W, 3) in [0, 255]
    return torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0)


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """Float tensor (3, H, W) in [-1, 1] -> PIL RGB."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def square_resize(img: Image.Image, size: int, bbox=None) -> Image.Image:
    """Crop to the object box (CUB, enlarged by 1.5 as in StackGAN/AttnGAN) or the centre square, then resize."""
    img = img.convert("RGB")
    w, h = img.size
    if bbox is not None:
        x, y, bw, bh = bbox
        r = int(max(bw, bh) * 0.75)
        cx, cy = int(x + bw / 2), int(y + bh / 2)
        img = img.crop((max(0, cx - r), max(0, cy - r), min(w, cx + r), min(h, cy + r)))
        w, h = img.size
    s = min(w, h)
    if w != h:
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != size:
        img = img.resize((size, size), Image.BICUBIC)
    return img


@dataclass
class Example:
    """One item: image (3, S, S) in [-1, 1], all its captions, attributes (or None) and its index."""

    image: torch.Tensor
    captions: list[str]
    attributes: dict | None
    index: int


def collate_examples(batch: list[Example]) -> dict:
    """Stack images; keep captions and attributes as Python lists."""
    return {
        "image": torch.stack([b.image for b in batch]),
        "captions": [b.captions for b in batch],
        "attributes": [b.attributes for b in batch],
        "index": torch.tensor([b.index for b in batch]),
    }


class CaptionDataset(torch.utils.data.Dataset):
    """Images from disk with their captions; bad images are reported and skipped, not fatal."""

    def __init__(self, records: list[CaptionRecord], size: int = 64, check_images: bool = True, name: str = ""):
        self.size = size
        self.name = name
        self.skipped: list[str] = []
        if check_images:
            records = [r for r in records if self._readable(r)]
            if self.skipped:
                shown = "\n  ".join(self.skipped[:10])
                more = f"\n  ... and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
                warnings.warn(
                    f"{name}: skipped {len(self.skipped)} unreadable image(s):\n  {shown}{more}",
                    DatasetWarning,
                    stacklevel=3,
                )
        if not records:
            raise DatasetFormatError(f"{name or 'dataset'}: no usable images with captions")
        self.records = records

    def _readable(self, r: CaptionRecord) -> bool:
        try:
            with Image.open(r.image_path) as im:
                im.verify()
            return True
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            self.skipped.append(f"{r.image_path} ({type(e).__name__}: {e})")
            return False

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Example:
        r = self.records[i]
        with Image.open(r.image_path) as im:
            img = square_resize(im, self.size, r.bbox)
        return Example(pil_to_tensor(img), r.captions, r.attributes, i)


class ShapesDataset(torch.utils.data.Dataset):
    """Shapes drawn on the fly: item i of a split is always the same image, captions and attributes."""

    def __init__(self, cfg: ShapesConfig | None = None, split: str = "train", length: int = 50_000):
        self.cfg = cfg or ShapesConfig()
        self.split = split
        self.length = length
        self.size = self.cfg.size
        self.name = f"shapes:{split}"

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < self.length:
            raise IndexError(i)
        s = make_sample(self.cfg, self.split, i)
        return Example(pil_to_tensor(s.image), s.captions, s.attributes, i)


def load_dataset(
    path: str | Path, split: str = "train", size: int = 64, length: int | None = None, seed: int = 0, **shapes_kwargs
) -> CaptionDataset | ShapesDataset:
    """'shapes' / 'shapes:test' or a folder in a known layout -> a dataset of `Example`s at `size` x `size`.

    Problems the reader met (missing caption files, empty captions) are reported as one warning.
    """
    spec = str(path)
    if spec.split(":")[0] == "shapes":
        if ":" in spec:
            split = spec.split(":", 1)[1]
        cfg = ShapesConfig(size=size, seed=seed, **shapes_kwargs)
        return ShapesDataset(cfg, split, length or 50_000)
    result = read_dataset(path, split)
    if result.problems:
        shown = "\n  ".join(result.problems[:10])
        more = f"\n  ... and {len(result.problems) - 10} more" if len(result.problems) > 10 else ""
        warnings.warn(f"{path} ({result.format}, {split}): {len(result.problems)} problem(s):\n  {shown}{more}",
                      DatasetWarning, stacklevel=2)  # fmt: skip
    if not result.records:
        raise DatasetFormatError(f"{path} ({result.format}, split {split}): no usable image with a caption")
    records = result.records[:length] if length else result.records
    return CaptionDataset(records, size=size, name=f"{path} ({result.format}, {split})")
