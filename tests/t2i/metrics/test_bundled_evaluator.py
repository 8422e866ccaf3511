"""The bundled Shapes 64x64 evaluator on real images: right on real ones, wrong on corrupted or mismatched ones."""

import pytest
import torch

from t2i.data.dataset import pil_to_tensor
from t2i.data.shapes import ShapesConfig, make_sample
from t2i.metrics import evaluate
from t2i.metrics.networks import DEFAULT_EVALUATOR

N = 100


def _real_test_images(n: int) -> torch.Tensor:
    cfg = ShapesConfig(size=64)
    return torch.stack([pil_to_tensor(make_sample(cfg, "test", i).image) for i in range(n)])


class ImagesPipeline:
    """Returns a fixed image tensor, in order: real images, corrupted or mis-assigned to captions."""

    family, resolution = "fixed", 64

    def __init__(self, images):
        self.images = images

    def __call__(self, captions, num_images_per_caption=1, seed=0, batch_size=64):
        assert num_images_per_caption == 1
        return self.images[seed : seed + len(captions)]  # evaluate() passes seed + offset per chunk


@pytest.fixture(scope="module")
def real_images():
    assert (DEFAULT_EVALUATOR / "config.json").is_file(), "the bundled evaluator is part of the repository"
    return _real_test_images(N)


def test_attribute_accuracy_real_high_colour_swapped_low(real_images):
    real = evaluate(ImagesPipeline(real_images), "shapes", ["attribute_accuracy"], num_samples=N, progress=False)
    swapped = evaluate(ImagesPipeline(real_images[:, [2, 0, 1]]), "shapes", ["attribute_accuracy"], num_samples=N,
                       progress=False)  # fmt: skip
    assert real["attribute_accuracy"] >= 0.95 and real["acc_color"] >= 0.97
    # RGB -> BRG turns red into blue, etc.: colour (and so overall) accuracy collapse; shapes are still seen.
    assert swapped["acc_color"] < 0.5 and swapped["attribute_accuracy"] < 0.4
    assert swapped["acc_shape"] > 0.8


def test_r_precision_true_high_shuffled_near_chance(real_images):
    true = evaluate(ImagesPipeline(real_images), "shapes", ["r_precision"], num_samples=N, progress=False)
    rolled = torch.roll(real_images, 1, dims=0)  # every caption gets the previous caption's image
    shuffled = evaluate(ImagesPipeline(rolled), "shapes", ["r_precision"], num_samples=N, progress=False)
    assert true["r_precision"] >= 0.85
    assert shuffled["r_precision"] <= 0.1  # chance is 0.01


@pytest.mark.slow
def test_real_ceiling_on_500_held_out_images():
    r = evaluate("real", "shapes", ["attribute_accuracy", "r_precision", "fid"], num_samples=500, progress=False)
    assert r["attribute_accuracy"] >= 0.99 and r["r_precision"] >= 0.90
