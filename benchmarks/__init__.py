"""Benchmarks and measurement scripts (run as `python benchmarks/<name>.py`); shared helpers live here."""

from __future__ import annotations

import json
from pathlib import Path


def save_png(fig, out: Path) -> Path:
    """Lay out and write `fig` as OUT.png (110 dpi); returns the path."""
    fig.tight_layout()
    png = Path(out).with_suffix(".png")
    fig.savefig(png, dpi=110)
    return png


def write_json(path, obj, indent: int = 1) -> Path:
    """Write `obj` as JSON to `path` (parent folders made); the scripts' --json output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent) + "\n")
    return path
