"""Pipelines: export -> load_pipeline round trips (fp16 too), seeded determinism, `t2i sample` and its errors."""

import json

import pytest
import torch

from t2i.models.attngan import AttnGANConfig, AttnGANGenerator
from t2i.models.stackgan import StackGANConfig, StackGANGenerator
from t2i.pipelines import T2IPipeline, export_generator, load_pipeline

CAPS = ["a small red circle in the top left corner", "a large blue square left of a green star"]


@pytest.fixture
def attn_ckpt(tmp_path, text_encoder):
    torch.manual_seed(0)
    cfg = AttnGANConfig(stages=[8, 16], z_dim=4, cond_dim=4, ngf=4, ndf=4, res_blocks=1)
    G = AttnGANGenerator(cfg).eval()
    path = export_generator(tmp_path / "attn", "attngan", G, cfg, dtype=torch.float16)
    return path, G, cfg


def test_fp16_export_round_trip(attn_ckpt, text_encoder):
    path, G, cfg = attn_ckpt
    assert json.loads((path / "config.json").read_text())["family"] == "attngan"
    pipe = load_pipeline(path)
    pipe._encoder = text_encoder
    assert (pipe.family, pipe.resolution) == ("attngan", 16)
    # The reference: the same generator with its weights rounded to fp16, as stored.
    G.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in G.state_dict().items()})
    ref = T2IPipeline("attngan", G, cfg, text_encoder=text_encoder)
    a = pipe(CAPS, 3, seed=5)
    assert a.shape == (6, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, ref(CAPS, 3, seed=5))
    fresh = load_pipeline(path)
    fresh._encoder = text_encoder  # (the shared encoder reads fp16-cached features: same encoder here)
    assert torch.equal(a, fresh(CAPS, 3, seed=5))  # a fresh load: identical
    images, maps = pipe.generate(CAPS, 1, seed=0)
    assert len(maps) == 1 and maps[0].shape[0] == 2 and maps[0].shape[2:] == (8, 8)
    assert pipe.tokens("a blue star") == ["[CLS]", "a", "blue", "star", "[SEP]"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint or run folder"):
        load_pipeline(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        load_pipeline(tmp_path / "x")
    (tmp_path / "x/config.json").write_text(json.dumps({"family": "stackgan", "model": {}}))
    with pytest.raises(FileNotFoundError, match="no generator.safetensors"):
        load_pipeline(tmp_path / "x")
    (tmp_path / "x/config.json").write_text(json.dumps({"family": "pixelcnn"}))
    with pytest.raises(ValueError, match="pixelcnn"):
        load_pipeline(tmp_path / "x")


def test_sample_cli(attn_ckpt, tmp_path, text_encoder, capsys):
    from PIL import Image

    import t2i.pipelines
    from t2i.cli import main

    t2i.pipelines._ENCODERS[(None, 32, -1)] = text_encoder
    path, _, _ = attn_ckpt
    out = tmp_path / "grid.png"
    argv = ["sample", str(path), "--caption", CAPS[0], "--caption", CAPS[1], "-n", "3", "--out", str(out)]
    assert main(argv + ["--attention-maps"]) == 0
    assert Image.open(out).size == (3 * 18 + 2, 2 * 18 + 2)
    assert (tmp_path / "grid-attention-0.png").is_file() and (tmp_path / "grid-attention-1.png").is_file()
    cfg = StackGANConfig(resolution=16, stage1_resolution=8, z_dim=4, cond_dim=4, ngf=4, ndf=4, res_blocks=1)
    stack = export_generator(tmp_path / "stack", "stackgan", StackGANGenerator(cfg).eval(), cfg)
    assert main(["sample", str(stack), "--caption", "a gray heart", "--attention-maps", "--out", str(out)]) == 2
    assert "needs an AttnGAN checkpoint" in capsys.readouterr().err
    assert main(["sample", str(stack), "--out", str(out)]) == 2
    assert main(["sample", str(stack), "--caption", "a gray heart", "--truncation", "-1", "--out", str(out)]) == 2
    assert "--truncation must be >= 0" in capsys.readouterr().err
    assert main(["sample", str(stack), "--caption", "a gray heart", "--truncation", "0.5", "--out", str(out)]) == 0


def test_truncation_scales_every_noise(text_encoder):
    """truncation 1 = the default images; 0 = the same image for every seed (z and CA's eps both scaled, so even a
    StackGAN with CA noise draws one image per caption); in between, z and eps are the seed's draws times psi."""
    torch.manual_seed(0)
    cfg = StackGANConfig(resolution=16, stage1_resolution=8, z_dim=4, cond_dim=4, ngf=4, ndf=4, res_blocks=1)
    pipe = T2IPipeline("stackgan", StackGANGenerator(cfg).eval(), cfg, text_encoder=text_encoder)
    base = pipe(CAPS, 2, seed=3)
    pipe.truncation = 1.0
    assert torch.equal(pipe(CAPS, 2, seed=3), base)
    pipe.truncation = 0.0
    a, b = pipe(CAPS, 2, seed=3), pipe(CAPS, 2, seed=4)
    assert torch.equal(a, b) and torch.equal(a[0], a[1]) and not torch.equal(a[0], a[2])
    seen = []
    real_forward = pipe.generator.forward

    def spy(z, *a, ca_eps=None, **k):
        seen.append((z, ca_eps))
        return real_forward(z, *a, ca_eps=ca_eps, **k)

    pipe.generator.forward = spy
    pipe.truncation = 0.5
    pipe(CAPS[:1], 1, seed=7)
    g = torch.Generator().manual_seed(7)
    z, eps = torch.randn(1, 4, generator=g), [torch.randn(1, 4, generator=g) for _ in range(2)]
    assert torch.equal(seen[0][0], z * 0.5) and all(torch.equal(x, e * 0.5) for x, e in zip(seen[0][1], eps))
    pipe.truncation = -0.1
    with pytest.raises(ValueError, match="truncation must be >= 0"):
        pipe(CAPS, 1)
