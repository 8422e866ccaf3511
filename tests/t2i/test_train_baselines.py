"""The baselines (#5) through the one training loop: a 2-step smoke run per recipe, export, reload, resume."""

from pathlib import Path

import pytest
import torch

import t2i.train as T
from t2i.pipelines import load_pipeline
from t2i.train_baselines import BASELINE_FAMILIES

ROOT = Path(__file__).resolve().parents[2]
DATA = ["data.size=16", "data.length=16", "train.batch_size=4", "train.checkpoint_every=2", "train.sample_every=2",
        "train.eval_every=0", "train.export_dtype=float32", "train.num_threads=0"]  # fmt: skip
TINY = {
    "diffusion": ["model.autoencoder=null", "model.resolution=16", "model.in_channels=3",
                  "model.block_out_channels=[8,16]", "model.norm_num_groups=4",
                  "model.attention_head_dim=4", "model.sample_steps=2"],
    "vqgan": ["model.resolution=16", "model.block_out_channels=[16,32]", "model.latent_channels=8",
              "model.num_codes=32", "model.norm_num_groups=8", "model.disc_channels=8", "model.disc_layers=2",
              "model.disc_start=1", "model.perceptual_evaluator=null"],
    "vq_prior": ["model.n_embd=16", "model.n_layer=1", "model.n_head=2"],
}  # fmt: skip


def test_baselines_are_registered():
    assert set(BASELINE_FAMILIES) <= set(T.FAMILIES)


def _run(name, tmp_path, text_encoder, extra=(), max_steps=2, resume=None):
    recipe = T.load_recipe(ROOT / f"configs/t2i/shapes_{name}.yaml", DATA + TINY[name] + list(extra))
    return T.train(recipe, resume=resume, max_steps=max_steps, runs_dir=tmp_path / "runs", progress=False,
                   text_encoder=text_encoder)  # fmt: skip


def test_diffusion_smoke_export_reload_identical(tmp_path, text_encoder):
    run = _run("diffusion", tmp_path, text_encoder)
    assert (run / "checkpoints/step-000002/ema.safetensors").is_file()
    assert (run / "samples/step-000002.png").is_file()
    pipe = load_pipeline(run)
    pipe.set_text_encoder(text_encoder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.family == "diffusion" and pipe.resolution == 16
    a = pipe(["a red circle"], 2, seed=1)  # the recipe's sample_steps=2 is the saved default
    again = load_pipeline(run / "export")
    again.set_text_encoder(text_encoder)
    again.set_progress_bar_config(disable=True)
    assert torch.equal(a, again(["a red circle"], 2, seed=1))
    assert pipe.config.default_steps == 2


def test_vqgan_then_prior_smoke_and_reload(tmp_path, text_encoder):
    ae = _run("vqgan", tmp_path, text_encoder)
    assert (ae / "export/vqmodel/config.json").is_file()
    assert (ae / "checkpoints/step-000002/disc.safetensors").is_file()
    log = (ae / "train.log").read_text()
    assert "rec_l1" in log and "perplexity" in log and "d_hinge" in log  # GAN term on after disc_start=1
    prior_run = _run("vq_prior", tmp_path, text_encoder, [f"model.autoencoder={ae}"])
    pipe = load_pipeline(prior_run)
    pipe.set_text_encoder(text_encoder)
    assert pipe.family == "vqgan" and pipe.resolution == 16
    a = pipe(["a red circle", "a blue star"], 2, seed=5)
    assert a.shape == (4, 3, 16, 16)
    again = load_pipeline(prior_run / "export")
    again.set_text_encoder(text_encoder)
    assert torch.equal(a, again(["a red circle", "a blue star"], 2, seed=5))


def test_prior_needs_an_autoencoder(tmp_path, text_encoder):
    with pytest.raises((ValueError, FileNotFoundError), match="autoencoder|no checkpoint"):
        _run("vq_prior", tmp_path, text_encoder, [f"model.autoencoder={tmp_path / 'nothing'}"])


def test_diffusion_resume_continues(tmp_path, text_encoder):
    run = _run("diffusion", tmp_path, text_encoder, max_steps=2)
    run2 = _run("diffusion", tmp_path, text_encoder, max_steps=4, resume=str(run))
    assert run2 == run and (run / "checkpoints/step-000004").is_dir()
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (run / "train.log").read_text().splitlines()]
    assert steps[-1] == 4


def test_latent_diffusion_on_a_vqgan_autoencoder(tmp_path, text_encoder):
    """VQGAN stage 1 -> latent diffusion on its 8x8 latents -> a pipeline that decodes to 16x16 and reloads exactly."""
    ae = _run("vqgan", tmp_path, text_encoder)
    run = _run("diffusion", tmp_path, text_encoder, [f"model.autoencoder={ae}", "model.block_out_channels=[16,16]",
                                                     "model.norm_num_groups=8"])  # fmt: skip
    export = run / "export"
    assert (export / "vqvae/config.json").is_file() and (export / "unet/config.json").is_file()
    pipe = load_pipeline(run)
    pipe.set_text_encoder(text_encoder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vqvae is not None and pipe.unet.config.sample_size == 8 and pipe.unet.config.in_channels == 8
    assert pipe.resolution == 16 and pipe.config.latent_scale > 0
    a = pipe(["a red circle"], 2, seed=3)
    assert a.shape == (2, 3, 16, 16) and a.abs().max() <= 1
    again = load_pipeline(export)
    again.set_text_encoder(text_encoder)
    again.set_progress_bar_config(disable=True)
    assert torch.equal(a, again(["a red circle"], 2, seed=3))


def test_latent_cache_equals_fresh_encoding(tmp_path, text_encoder):
    """The per-index latent cache hands the UNet exactly what encoding the batch again would (times the scale)."""
    ae = _run("vqgan", tmp_path, text_encoder)
    recipe = T.load_recipe(ROOT / "configs/t2i/shapes_diffusion.yaml", DATA + TINY["diffusion"] + [
        f"model.autoencoder={ae}", "model.block_out_channels=[16,16]", "model.norm_num_groups=8"])  # fmt: skip
    dcfg = T._from_dict(T.DataConfig, recipe["data"], "data")
    tcfg = T._from_dict(T.TrainConfig, recipe["train"], "train")
    fam = BASELINE_FAMILIES["diffusion"]("diffusion", dict(recipe["model"]), tcfg)
    fam.data_cfg = dcfg

    class Acc:
        device = torch.device("cpu")
        process_index = 0

    fam.bind(Acc(), text_encoder, dict(fam.modules))
    batches = T.Batches(dcfg, 4, 0, 1, 0)
    b = batches.get(0)
    first = fam._x0(b)
    assert len(fam._latents) == 4
    again = fam._x0(b)  # served from the cache
    with torch.no_grad():
        fresh = fam.vq.encode(b["image"]).latents * fam.cfg.latent_scale
    assert torch.equal(first, again) and torch.allclose(first, fresh, atol=1e-6)
    assert 0.2 < float(first.std()) < 5  # scaled towards unit variance


def _run_and_export_agree(run, text_encoder):
    """The run folder (its last checkpoint's EMA) and its export sample the same images for a fixed seed; -> the
    run's pipeline."""
    pipe, again = load_pipeline(run), load_pipeline(run / "export")
    for p in (pipe, again):
        p.set_text_encoder(text_encoder)
        if hasattr(p, "set_progress_bar_config"):
            p.set_progress_bar_config(disable=True)
    assert torch.equal(pipe(["a red circle"], 2, seed=1), again(["a red circle"], 2, seed=1))
    return pipe


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def test_init_from_continues_latent_diffusion_from_an_export(tmp_path, text_encoder):
    """train.init_from copies an export's UNet (and its latent scale) into a new run; one step at lr 0 exports the
    same weights. Another autoencoder or another architecture is refused, naming the problem."""
    ae = _run("vqgan", tmp_path, text_encoder)
    latent = [f"model.autoencoder={ae}", "model.block_out_channels=[16,16]", "model.norm_num_groups=8"]
    src = _run("diffusion", tmp_path, text_encoder, latent) / "export"
    run = _run("diffusion", tmp_path, text_encoder, latent + [f"train.init_from={src}", "train.lr_g=0"], max_steps=1)
    a, b = _weights(src / "unet"), _weights(run / "export/unet")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_pipeline(run).config.latent_scale == load_pipeline(src).config.latent_scale
    with pytest.raises(ValueError, match=r"differs from this recipe's in \['block_out_channels'"):
        _run("diffusion", tmp_path, text_encoder, latent[:1] + ["model.block_out_channels=[16,32]",
             "model.norm_num_groups=8", f"train.init_from={src}"])  # fmt: skip
    other_ae = _run("vqgan", tmp_path, text_encoder, ["train.seed=1"])
    with pytest.raises(ValueError, match="another autoencoder's latents"):
        _run("diffusion", tmp_path, text_encoder, [f"model.autoencoder={other_ae}"] + latent[1:] +
             [f"train.init_from={src}"])  # fmt: skip


def test_init_from_continues_the_prior_from_a_bundle_like_export(tmp_path, text_encoder):
    ae = _run("vqgan", tmp_path, text_encoder)
    src = _run("vq_prior", tmp_path, text_encoder, [f"model.autoencoder={ae}"]) / "export"
    run = _run("vq_prior", tmp_path, text_encoder, [f"model.autoencoder={ae}", f"train.init_from={src}",
                                                    "train.lr_g=0"], max_steps=1)  # fmt: skip
    a, b = _weights(src / "prior"), _weights(run / "export/prior")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="no prior/ folder"):
        _run("vq_prior", tmp_path, text_encoder, [f"model.autoencoder={ae}", f"train.init_from={ae}"])


def test_word_adapter_in_front_of_a_trained_unet(tmp_path, text_encoder):
    """init_from a plain UNet into a recipe with a word adapter: the fresh adapter is the identity, so at lr 0 the
    new run samples exactly what the source did; the adapter is trained, exported and reloaded with the UNet."""
    src = _run("diffusion", tmp_path, text_encoder)
    run = _run("diffusion", tmp_path, text_encoder, ["model.word_adapter_layers=1", f"train.init_from={src}",
                                                     "train.lr_g=0"], max_steps=1)  # fmt: skip
    assert (run / "export/word_adapter/config.json").is_file()
    assert (run / "checkpoints/step-000001/word_adapter.safetensors").is_file()
    pipes = [load_pipeline(p) for p in (src, run)]
    for p in pipes:
        p.set_text_encoder(text_encoder)
    a, b = (p(["a red circle left of a blue star"], 2, seed=4) for p in pipes)
    assert torch.allclose(a, b, atol=1e-5)
    trained = _run("diffusion", tmp_path, text_encoder, ["model.word_adapter_layers=1", f"train.init_from={run}"],
                   max_steps=2)  # fmt: skip
    w = _weights(trained / "export/word_adapter")
    assert any(float(v.float().abs().max()) > 0 for k, v in w.items() if k.startswith("blocks.0.fc2"))
    resumed = _run("diffusion", tmp_path, text_encoder, ["model.word_adapter_layers=1"], max_steps=3,
                   resume=str(trained))  # fmt: skip
    assert (resumed / "checkpoints/step-000003").is_dir()
    with pytest.raises(ValueError, match="has a word adapter"):
        _run("diffusion", tmp_path, text_encoder, [f"train.init_from={run}"])


def test_layout_net_in_front_of_a_trained_unet(tmp_path, text_encoder):
    """init_from a plain UNet into a recipe with a layout net: the new input channels start at zero weight, so at
    lr 0 the run samples what the source did; the layout net is trained (its loss logged), exported, reloaded and
    resumed."""
    src = _run("diffusion", tmp_path, text_encoder)
    lay = ["model.layout_channels=4", "model.layout_width=16", "model.layout_layers=1"]
    run = _run("diffusion", tmp_path, text_encoder, lay + [f"train.init_from={src}", "train.lr_g=0",
                                                           "model.layout_lr=0"], max_steps=1)  # fmt: skip
    assert (run / "export/layout_net/config.json").is_file()
    pipes = [load_pipeline(p) for p in (src, run)]
    for p in pipes:
        p.set_text_encoder(text_encoder)
        p.set_progress_bar_config(disable=True)
    assert pipes[1].unet.config.in_channels == pipes[0].unet.config.in_channels + 4
    a, b = (p(["a red circle left of a blue star"], 2, seed=4) for p in pipes)
    assert torch.allclose(a, b, atol=1e-5)
    trained = _run("diffusion", tmp_path, text_encoder, lay + [f"train.init_from={run}"], max_steps=2)
    assert "layout" in (trained / "train.log").read_text()
    w = _weights(trained / "export/unet")["conv_in.weight"]
    assert float(w[:, -4:].abs().max()) > 0  # the UNet started to read the map
    _run_and_export_agree(trained, text_encoder)
    resumed = _run("diffusion", tmp_path, text_encoder, lay, max_steps=3, resume=str(trained))
    assert (resumed / "checkpoints/step-000003/layout_net.safetensors").is_file()
    with pytest.raises(ValueError, match="has a layout net"):
        _run("diffusion", tmp_path, text_encoder, [f"train.init_from={run}"])
    # A contextual layout net fine-tuned from this one: its state projection is new and starts at zero, so at lr 0
    # it samples what the run did; trained (with map-only rows) it learns to paint the state.
    ctx = lay + ["model.layout_contextual=true", "model.layout_text_dropout=0.5"]
    frozen = [f"train.init_from={trained}", "train.lr_g=0", "model.layout_lr=0"]
    p, q = (load_pipeline(_run("diffusion", tmp_path, text_encoder, o + frozen, max_steps=1)) for o in (ctx, lay))
    for x in (p, q):
        x.set_text_encoder(text_encoder)
        x.set_progress_bar_config(disable=True)
    assert p.layout_net.config.contextual and p.layout_net.hproj is not None and q.layout_net.hproj is None
    assert torch.allclose(p(["a red circle"], 2, seed=1), q(["a red circle"], 2, seed=1), atol=1e-5)
    moved = _run("diffusion", tmp_path, text_encoder, ctx + [f"train.init_from={trained}"], max_steps=2)
    assert float(_weights(moved / "export/layout_net")["hproj.weight"].float().abs().max()) > 0


def test_layout_net_in_front_of_a_trained_prior(tmp_path, text_encoder):
    """The VQGAN prior with a layout stage (text -> layout -> codes): init_from a plain prior, the map's projection
    starts at zero, so at lr 0 the run samples what the source did; trained, the prior reads the map and the layout
    net's loss is logged; export reloads to identical samples; resume; the layout net can come from another export
    (model.layout_from); a layout export into a recipe without the stage is refused."""
    ae = _run("vqgan", tmp_path, text_encoder)
    src = _run("vq_prior", tmp_path, text_encoder, [f"model.autoencoder={ae}"])
    lay = [f"model.autoencoder={ae}", "model.layout_channels=4", "model.layout_width=16", "model.layout_layers=1",
           "model.layout_contextual=true"]  # fmt: skip
    run = _run("vq_prior", tmp_path, text_encoder, lay + [f"train.init_from={src}", "train.lr_g=0",
                                                          "model.layout_lr=0"], max_steps=1)  # fmt: skip
    assert (run / "export/layout_net/config.json").is_file()
    pipes = [load_pipeline(p) for p in (src, run)]
    for p in pipes:
        p.set_text_encoder(text_encoder)
    assert pipes[1].layout_net is not None and pipes[0].layout_net is None
    a, b = (p(["a red circle left of a blue star"], 2, seed=4) for p in pipes)
    assert torch.equal(a, b)
    trained = _run("vq_prior", tmp_path, text_encoder, lay + [f"train.init_from={run}",
                                                              "model.layout_text_dropout=0.5"])  # fmt: skip
    log = (trained / "train.log").read_text()
    assert "layout" in log and "ce" in log
    assert float(_weights(trained / "export/prior")["layout_proj.weight"].float().abs().max()) > 0
    _run_and_export_agree(trained, text_encoder)
    resumed = _run("vq_prior", tmp_path, text_encoder, lay, max_steps=3, resume=str(trained))
    assert (resumed / "checkpoints/step-000003/layout_net.safetensors").is_file()
    # layout_from: the layout net's weights from another export (here the trained run's), the prior from init_from
    frozen = [f"train.init_from={src}", f"model.layout_from={trained}", "train.lr_g=0", "model.layout_lr=0"]
    moved = _run("vq_prior", tmp_path, text_encoder, lay + frozen, max_steps=1)
    x, y = _weights(trained / "export/layout_net"), _weights(moved / "export/layout_net")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    # layout attention grown on a prior that reads only its cell: the branches start at zero and learn at their rate
    grow = [f"train.init_from={trained}", "model.layout_attention=true", "model.layout_prior_lr=0.01"]
    grown = _run("vq_prior", tmp_path, text_encoder, lay + grow)
    w = _weights(grown / "export/prior")
    assert float(w["layout_attn.0.out.weight"].float().abs().max()) > 0
    assert _run_and_export_agree(grown, text_encoder).prior.layout_attn is not None
    with pytest.raises(ValueError, match="has a layout net"):
        _run("vq_prior", tmp_path, text_encoder, [f"model.autoencoder={ae}", f"train.init_from={run}"])
    with pytest.raises(ValueError, match="need the layout stage"):
        _run("vq_prior", tmp_path, text_encoder, [f"model.autoencoder={ae}", "model.layout_contextual=true"])
    with pytest.raises(ValueError, match="need the layout stage"):
        _run("vq_prior", tmp_path, text_encoder, [f"model.autoencoder={ae}", "model.layout_prior_lr=0.01"])
