"""The bundled Shapes 64x64 weights: small enough to ship, and they load into the pipelines the app and eval use."""

import json
from pathlib import Path

import pytest
import torch

from t2i.pipelines import load_pipeline

ROOT = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes64"
LIMIT = 15 * 2**20  # the cap per bundled model


@pytest.mark.parametrize("name", ["stackgan", "attngan", "damsm", "evaluator"])
def test_bundled_folder_is_small_and_documented(name):
    folder = ROOT / name
    assert (folder / "config.json").is_file(), f"{folder} is missing"
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= LIMIT, f"{folder} is {size / 2**20:.1f} MB"
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.pt")) and not list(folder.glob("*.bin"))


@pytest.mark.parametrize("name", ["stackgan", "attngan"])
def test_bundled_gan_samples_deterministically(name, text_encoder):
    cfg = json.loads((ROOT / name / "config.json").read_text())
    assert cfg["family"] == name and cfg["resolution"] == 64 and cfg["dtype"] == "float16"
    pipe = load_pipeline(ROOT / name)
    pipe._encoder = text_encoder
    caps = ["a large red circle in the center", "a small blue square left of a yellow star"]
    a = pipe(caps, 2, seed=0)
    assert a.shape == (4, 3, 64, 64) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, pipe(caps, 2, seed=0)) and not torch.equal(a, pipe(caps, 2, seed=1))


def test_exports_from_before_sentence_norm_load_without_it(tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(ROOT / "stackgan", old)
    cfg = json.loads((old / "config.json").read_text())
    assert cfg["model"].pop("sentence_norm") is True  # today's exports always say
    (old / "config.json").write_text(json.dumps(cfg))
    assert load_pipeline(old).generator.cfg.sentence_norm is False
    assert load_pipeline(ROOT / "stackgan").generator.cfg.sentence_norm is True


def _tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", ["vqgan", "diffusion", "diffusion_layout", "vqgan_layout"])
def test_bundled_baseline_is_small_safetensors_and_samples_deterministically(name, text_encoder):
    folder = ROOT / name
    assert folder.is_dir(), f"{folder} is missing (make baseline-checkpoints)"
    assert _tree_size(folder) <= LIMIT, f"{folder} is {_tree_size(folder) / 2**20:.1f} MB"
    assert list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    assert (folder / "README.md").is_file()
    pipe = load_pipeline(folder)
    pipe.set_text_encoder(text_encoder)
    family = name.split("_")[0]
    if family == "diffusion":
        pipe.set_progress_bar_config(disable=True)
        assert pipe.vqvae is not None  # latent diffusion: decodes through the bundled autoencoder
        assert (pipe.layout_net is not None) == (name == "diffusion_layout")
    else:
        assert (pipe.layout_net is not None) == (name == "vqgan_layout")
        assert (pipe.prior.layout_attn is not None) == (name == "vqgan_layout")
    assert pipe.family == family and pipe.resolution == 64
    caps = ["a large red circle in the center"]
    kw = {"num_inference_steps": 4} if family == "diffusion" else {}
    a = pipe(caps, 2, seed=0, **kw)
    assert a.shape == (2, 3, 64, 64) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, pipe(caps, 2, seed=0, **kw)) and not torch.equal(a, pipe(caps, 2, seed=1, **kw))
