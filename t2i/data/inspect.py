"""`t2i data inspect`: what a dataset holds (images, captions, vocabulary, unreadable files) and a captioned grid."""

from __future__ import annotations

import re
import textwrap
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from t2i.data.dataset import DatasetWarning, load_dataset, tensor_to_pil

_WORD = re.compile(r"[a-z0-9']+")


def caption_stats(captions_per_image: list[list[str]]) -> dict:
    """Counts of images and captions, caption length (words) statistics and vocabulary size."""
    lengths, vocab = [], Counter()
    for caps in captions_per_image:
        for c in caps:
            words = _WORD.findall(c.lower())
            lengths.append(len(words))
            vocab.update(words)
    lens = np.array(lengths or [0])
    per_image = np.array([len(c) for c in captions_per_image] or [0])
    return {
        "images": len(captions_per_image),
        "captions": int(per_image.sum()),
        "captions_per_image": {
            "min": int(per_image.min()),
            "mean": float(per_image.mean()),
            "max": int(per_image.max()),
        },
        "caption_words": {"min": int(lens.min()), "mean": float(lens.mean()), "max": int(lens.max())},
        "vocabulary": len(vocab),
        "top_words": vocab.most_common(15),
    }


def caption_grid(images: list[Image.Image], captions: list[str], cols: int = 4, cell: int = 160) -> Image.Image:
    """Images in a grid, each with its (wrapped) caption underneath."""
    font = ImageFont.load_default()
    text_h = 52
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (img, cap) in enumerate(zip(images, captions)):
        x, y = (i % cols) * cell, (i // cols) * (cell + text_h)
        grid.paste(img.resize((cell - 8, cell - 8), Image.NEAREST), (x + 4, y + 4))
        lines = textwrap.wrap(cap, width=cell // 6)[:4]
        for j, line in enumerate(lines):
            draw.text((x + 4, y + cell - 2 + 12 * j), line, fill="black", font=font)
    return grid


def inspect_dataset(path: str, split: str = "train", size: int = 64, num: int | None = None, grid_path=None) -> dict:
    """Statistics of a dataset (Shapes: the first `num` items) and, if asked, a grid PNG of 16 examples."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DatasetWarning)
        ds = load_dataset(
            path, split=split, size=size, length=num or (1000 if str(path).startswith("shapes") else None)
        )
    problems = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    records = getattr(ds, "records", None)
    if records is not None:
        caps = [r.captions for r in records]
    else:
        caps = [ds[i].captions for i in range(len(ds))]
    stats = caption_stats(caps)
    stats["dataset"] = getattr(ds, "name", str(path))
    stats["unreadable_images"] = list(getattr(ds, "skipped", []))
    stats["problems"] = problems
    if grid_path:
        n = min(16, len(ds))
        items = [ds[i] for i in range(n)]
        grid = caption_grid([tensor_to_pil(e.image) for e in items], [e.captions[0] for e in items])
        Path(grid_path).parent.mkdir(parents=True, exist_ok=True)
        grid.save(grid_path)
        stats["grid"] = str(grid_path)
    return stats
