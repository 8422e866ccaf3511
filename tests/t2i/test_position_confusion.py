"""benchmarks/position_confusion.py: named vs drawn position, and the share drawn on the mirrored side."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import position_confusion  # noqa: E402


class MirroredReal:
    """A 'generator' that draws every test scene mirrored left-right (the real test images, flipped)."""

    resolution = 64

    def __init__(self, n):
        from t2i.metrics.core import EvalContext

        self.images, self.done = EvalContext("real", "shapes", n, progress=False).images, 0

    def __call__(self, captions, num_images_per_caption=1, seed=0, batch_size=64):
        x = self.images[self.done : self.done + len(captions)].flip(-1)
        self.done += len(captions)
        return x


def test_real_images_are_on_the_diagonal_and_mirrored_ones_on_the_other_side():
    from t2i.metrics import evaluator_available

    if not evaluator_available():
        pytest.skip("bundled evaluator not present")
    real = position_confusion.confusion("real", 60)
    assert real["n"] > 10 and real["accuracy"] == 1.0 and real["side_swaps"] == 0.0
    m = position_confusion.confusion(MirroredReal(60), 60)
    assert m["n"] == real["n"]
    side = sum(real["matrix"][p][p] for p in ("top left", "top right", "left", "right", "bottom left", "bottom right"))
    assert m["side_swaps"] == pytest.approx(side / m["n"]) and m["accuracy"] == pytest.approx(1 - side / m["n"])
    assert m["matrix"]["top left"]["top right"] == real["matrix"]["top left"]["top left"]
    assert m["matrix"]["centre"]["centre"] == real["matrix"]["centre"]["centre"]
