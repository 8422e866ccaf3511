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

    t2i.pipelines._ENCODERS[(None, 32)] = text_encoder
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
