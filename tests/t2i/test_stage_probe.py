"""benchmarks/stage_probe.py: a pipeline view that returns one generator stage's images at the final size."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import stage_probe  # noqa: E402


@pytest.mark.parametrize("bundle", ["stackgan", "attngan"])
def test_stage_view_returns_each_stage_upsampled_and_restores_the_generator(bundle):
    ck = ROOT / "checkpoints/shapes64" / bundle
    if not ck.exists():
        pytest.skip("bundled checkpoint not present")
    from t2i.pipelines import load_pipeline

    pipe = load_pipeline(ck)
    caps = ["a small red circle at the top left", "a large blue square on the right"]
    final = pipe(caps, 2, seed=3)
    with torch.no_grad():  # the same noise the pipeline draws for seed 3, through the raw generator
        g = torch.Generator().manual_seed(3)
        z = torch.randn(4, pipe.z_dim, generator=g)
        eps = [torch.randn(4, int(pipe.model_cfg.cond_dim), generator=g) for _ in range(pipe.generator.num_ca)]
        f = pipe.text_encoder.encode(caps)[torch.arange(2).repeat_interleave(2)]
        low = pipe.generator(z, f.sentence, f.words, f.mask, ca_eps=eps).images[0].float().clamp(-1, 1)
    got = stage_probe.StageView(pipe, 0)(caps, 2, seed=3)
    assert low.shape[-1] == 32 and got.shape == final.shape == (4, 3, 64, 64)
    assert torch.allclose(got, F.interpolate(low, size=64, mode="bilinear"), atol=1e-5)
    assert not torch.allclose(got, final, atol=1e-2)  # a different stage, not the final image
    assert torch.equal(stage_probe.StageView(pipe, 1)(caps, 2, seed=3), final)  # the last stage is the image
    assert "forward" not in vars(pipe.generator) and torch.equal(pipe(caps, 2, seed=3), final)  # restored
