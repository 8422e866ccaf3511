"""Benchmarks and measurement scripts (run as `python benchmarks/<name>.py`); shared helpers live here."""

from __future__ import annotations

from pathlib import Path


def save_png(fig, out: Path) -> Path:
    """Lay out and write `fig` as OUT.png (110 dpi); returns the path."""
    fig.tight_layout()
    png = Path(out).with_suffix(".png")
    fig.savefig(png, dpi=110)
    return png
