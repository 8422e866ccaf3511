import pytest
import torch

from t2i.metrics.networks import AttributeRecognizer, Evaluator, EvaluatorConfig, ImageTextMatcher, save_evaluator

TINY = dict(resolution=16, channels=(8, 8), feature_dim=16, embed_dim=8)


@pytest.fixture(scope="session")
def tiny_evaluator(tmp_path_factory):
    """A random (untrained) 16x16 evaluator saved to disk: exercises every code path in a fraction of a second."""
    torch.manual_seed(0)
    cfg = EvaluatorConfig(**TINY)
    ev = Evaluator(cfg, AttributeRecognizer(cfg).eval(), ImageTextMatcher(cfg).eval())
    return save_evaluator(ev, tmp_path_factory.mktemp("evaluator"))


class FakePipeline:
    """A T2IPipeline stand-in: noise images (or a fixed image set) at a declared resolution."""

    family = "fake"

    def __init__(self, resolution: int = 16, images: torch.Tensor | None = None):
        self.resolution = resolution
        self.images = images
        self.calls = []

    def __call__(self, captions, num_images_per_caption=1, seed=0, batch_size=64):
        self.calls.append((len(captions), num_images_per_caption, seed))
        n = len(captions) * num_images_per_caption
        if self.images is not None:
            return self.images[:n]
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 3, self.resolution, self.resolution, generator=g) * 2 - 1

    def to(self, device):
        return self


@pytest.fixture
def fake_pipeline():
    return FakePipeline
