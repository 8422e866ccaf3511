"""The training loop: a 2-step smoke run per Shapes recipe (shrunk by overrides) writes a checkpoint and an export
that `load_pipeline` reloads to identical samples; resume after SIGKILL; overrides and bad recipes."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from t2i.pipelines import T2IPipeline, load_pipeline
from t2i.train import NonFiniteLossError, apply_overrides, latest_checkpoint, load_recipe, train

ROOT = Path(__file__).resolve().parents[2]
DATA = ["data.size=16", "data.length=32", "train.batch_size=4", "train.checkpoint_every=2", "train.sample_every=2",
        "train.eval_every=0", "train.export_dtype=float32", "train.num_threads=0"]  # fmt: skip
TINY = {
    "stackgan": ["model.resolution=16", "model.stage1_resolution=8", "model.ngf=4", "model.ndf=4", "model.z_dim=4",
                 "model.cond_dim=4", "model.res_blocks=1"],
    "damsm": ["model.resolution=16", "model.region_size=4", "model.embed_dim=8", "model.channels=4"],
    "attngan": ["model.stages=[8,16]", "model.refine_down=1", "model.ngf=4", "model.ndf=4", "model.z_dim=4",
                "model.cond_dim=4", "model.res_blocks=1"],
}  # fmt: skip


def _run(name, tmp_path, text_encoder, extra=(), **kw):
    recipe = load_recipe(ROOT / f"configs/t2i/shapes_{name}.yaml", DATA + TINY[name] + list(extra))
    return train(recipe, max_steps=kw.pop("max_steps", 2), runs_dir=tmp_path / "runs", progress=False,
                 text_encoder=text_encoder, **kw)  # fmt: skip


def _reloads_identically(run, text_encoder):
    pipe = load_pipeline(run)
    pipe._encoder = text_encoder
    caps = ["a small red circle in the top left corner", "a large blue square left of a green star"]
    a, b = pipe(caps, 2, seed=3), load_pipeline(run / "export")
    b._encoder = text_encoder
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b(caps, 2, seed=3))
    assert torch.allclose(a, pipe(caps, 2, seed=3, batch_size=3), atol=1e-5)  # nor does the batch size
    assert not torch.equal(a, pipe(caps, 2, seed=4))
    return pipe


def test_smoke_stackgan_reload_matches_ema(tmp_path, text_encoder):
    run = _run("stackgan", tmp_path, text_encoder)
    assert (run / "config.yaml").is_file() and (run / "checkpoints/step-000002/G_ema.safetensors").is_file()
    assert (run / "samples/step-000002.png").is_file() and any((run / "logs").iterdir())
    log = [json.loads(x) for x in (run / "train.log").read_text().splitlines()]
    assert log[-1]["step"] == 2 and log[-1]["images_per_second"] > 0
    pipe = _reloads_identically(run, text_encoder)
    # The export holds the EMA generator: same images as a pipeline over the checkpoint's G_ema weights.
    from safetensors.torch import load_file

    from t2i.pipelines import build_generator

    G, cfg = build_generator("stackgan", json.loads((run / "export/config.json").read_text())["model"])
    ema = load_file(str(run / "checkpoints/step-000002/G_ema.safetensors"))
    G.load_state_dict({k[len("module.") :]: v for k, v in ema.items() if k.startswith("module.")})
    ref = T2IPipeline("stackgan", G, cfg, text_encoder=text_encoder)
    assert torch.equal(ref(["a gray heart"], 2, seed=0), pipe(["a gray heart"], 2, seed=0))
    # export_checkpoint rebuilds the same pipeline folder from the checkpoint (and can take the raw G instead).
    from t2i.train import export_checkpoint

    again = load_pipeline(export_checkpoint(run / "checkpoints/step-000002", tmp_path / "again", dtype="float32"))
    again._encoder = text_encoder
    assert torch.equal(again(["a gray heart"], 2, seed=0), pipe(["a gray heart"], 2, seed=0))
    raw = load_pipeline(export_checkpoint(run / "checkpoints/step-000002", tmp_path / "raw", "G"))
    assert json.loads((tmp_path / "raw/config.json").read_text())["weights"] == "G"
    raw._encoder = text_encoder
    assert not torch.equal(raw(["a gray heart"], 2, seed=0), pipe(["a gray heart"], 2, seed=0))


def test_ema_warmup():
    """The warm-up decay min(0.999, (1 + n) / (10 + n)), applied to float tensors; integer buffers are copied; and
    AveragedModel with it equals a per-parameter loop written out by hand."""
    from torch.optim.swa_utils import AveragedModel

    from t2i.train import ema_with_warmup

    fn = ema_with_warmup(0.999)
    avg, one = [torch.zeros(2), torch.zeros(3)], [torch.ones(2), torch.ones(3)]
    fn(avg, one, torch.tensor(0))
    assert all(torch.allclose(a, torch.full_like(a, 0.9)) for a in avg)  # decay 1/10 on the first update
    avg = [torch.zeros(2)]
    fn(avg, [torch.ones(2)], torch.tensor(10**6))
    assert torch.allclose(avg[0], torch.full((2,), 0.001))  # then the nominal 0.999
    ints = [torch.tensor(3)]
    fn(ints, [torch.tensor(7)], torch.tensor(5))
    assert ints[0].item() == 7

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = AveragedModel(net, multi_avg_fn=ema_with_warmup(0.99), use_buffers=True)
    ref = [t.detach().clone() for t in list(net.parameters()) + list(net.buffers())]
    for k in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(8, 3))  # moves the BatchNorm running statistics
        ema.update_parameters(net)
        cur = [t.detach() for t in list(net.parameters()) + list(net.buffers())]
        d = min(0.99, (1 + k) / (10 + k))  # AveragedModel copies on update 0; update k averages with n = k
        ref = [c.clone() if k == 0 or not r.is_floating_point() else r * d + c * (1 - d) for r, c in zip(ref, cur)]
    got = list(ema.module.parameters()) + list(ema.module.buffers())
    assert all(torch.allclose(g, r, atol=1e-6) for g, r in zip(got, ref))


def test_smoke_damsm_then_attngan(tmp_path, text_encoder):
    damsm = _run("damsm", tmp_path, text_encoder)
    assert (damsm / "export/damsm.safetensors").is_file()
    run = _run("attngan", tmp_path, text_encoder, [f"model.damsm_checkpoint={damsm}", "train.gan_loss=bce",
                                                   "train.ma_gp_weight=0"])  # fmt: skip
    log = [json.loads(x) for x in (run / "train.log").read_text().splitlines()]
    assert "g_damsm" in log[-1]
    pipe = _reloads_identically(run, text_encoder)
    images, maps = pipe.generate(["a blue star"], 1, seed=0)
    assert maps[0].shape[:2] == (1, len(pipe.tokens("a blue star")))


def test_resume_after_kill(tmp_path, text_encoder):
    """A run killed with SIGKILL after a checkpoint resumes from that step, not from 0, and finishes."""
    args = [sys.executable, "-m", "t2i.train", str(ROOT / "configs/t2i/shapes_stackgan.yaml"), *DATA,
            *TINY["stackgan"], "train.checkpoint_every=1", "--max-steps", "100000", "--runs-dir",
            str(tmp_path / "runs"), "--no-progress"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = tmp_path / "runs/shapes_stackgan-000"
    deadline = time.time() + 120
    while time.time() < deadline and (latest_checkpoint(run) if run.exists() else None) is None:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = int(latest_checkpoint(run).name.split("-")[1])
    assert saved >= 1
    recipe = load_recipe(ROOT / "configs/t2i/shapes_stackgan.yaml", DATA + TINY["stackgan"])
    out = train(recipe, resume="latest", max_steps=saved + 2, runs_dir=tmp_path / "runs", progress=False,
                text_encoder=text_encoder)  # fmt: skip
    assert out == run
    steps = [json.loads(x)["step"] for x in (run / "train.log").read_text().splitlines()]
    assert steps[-1] == saved + 2
    assert json.loads((latest_checkpoint(run) / "state.json").read_text())["step"] == saved + 2
    assert json.loads((run / "export/config.json").read_text())["step"] == saved + 2


def test_max_minutes_stops_cleanly_and_resumes(tmp_path, text_encoder):
    """train.max_minutes ends the run at the first step past the limit with a checkpoint and an export of that step
    (a lease or queue slot ends without losing work); resume then goes on to the recipe's own max_steps."""
    run = _run("stackgan", tmp_path, text_encoder, ["train.max_minutes=0.000001", "train.checkpoint_every=1000"],
               max_steps=1000)  # fmt: skip
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]
    assert json.loads((run / "export/config.json").read_text())["step"] == 1
    assert (run / "samples/step-000001.png").is_file()
    recipe = load_recipe(ROOT / "configs/t2i/shapes_stackgan.yaml", DATA + TINY["stackgan"])
    out = train(recipe, resume=str(run), max_steps=3, runs_dir=tmp_path / "runs", progress=False,
                text_encoder=text_encoder)  # fmt: skip
    assert out == run and json.loads((run / "export/config.json").read_text())["step"] == 3
    with pytest.raises(ValueError, match="train.max_minutes must be a number >= 0"):
        _run("stackgan", tmp_path, text_encoder, ["train.max_minutes=-1"])


def test_non_finite_loss_is_reported(tmp_path, text_encoder, monkeypatch):
    import t2i.losses

    monkeypatch.setattr(t2i.losses, "kl_loss", lambda mu, logvar: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"step 0: non-finite loss in phase G: g_kl=nan"):
        _run("stackgan", tmp_path, text_encoder)
    # on_nonfinite=skip: the G steps are skipped with a warning and the run still finishes.
    with pytest.warns(UserWarning, match="step skipped"):
        run = _run("stackgan", tmp_path, text_encoder, ["train.on_nonfinite=skip"])
    assert (run / "checkpoints/step-000002").is_dir()


def test_overrides_and_bad_recipes(tmp_path):
    r = apply_overrides({"train": {"lr_g": 1.0}}, ["train.lr_g=2e-4", "model.stages=[8,16]", "name=x"])
    assert r == {"train": {"lr_g": 2e-4}, "model": {"stages": [8, 16]}, "name": "x"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides({}, ["train.lr_g"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr'\]"):
        train(load_recipe(ROOT / "configs/t2i/shapes_stackgan.yaml", ["train.lr=1"]), runs_dir=tmp_path)
    with pytest.raises(ValueError, match=r"train\.checkpoint_every must be an integer >= 1, got 0"):
        train(load_recipe(ROOT / "configs/t2i/shapes_stackgan.yaml", ["train.checkpoint_every=0"]), runs_dir=tmp_path)
    with pytest.raises(ValueError, match=r"train\.sample_every must be an integer >= 0 \(never\), got -1"):
        train(load_recipe(ROOT / "configs/t2i/shapes_stackgan.yaml", ["train.sample_every=-1"]), runs_dir=tmp_path)
    assert not (tmp_path / "shapes_stackgan-000").exists()  # rejected before a run folder is made
    from t2i.train import TrainConfig, check_train_config

    tcfg = TrainConfig(**load_recipe(ROOT / "configs/t2i/shapes_stackgan.yaml", ["train.mixed_precision=no"])["train"])
    check_train_config(tcfg)  # YAML reads `no` as False; that means "no", not an error from accelerate
    assert tcfg.mixed_precision == "no"
    with pytest.raises(ValueError, match=r"train\.mixed_precision must be 'no', 'bf16' or 'fp16', got 'fp32'"):
        train(
            load_recipe(ROOT / "configs/t2i/shapes_stackgan.yaml", ["train.mixed_precision=fp32"]), runs_dir=tmp_path
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: stackgan\n")
    with pytest.raises(ValueError, match="needs a 'model' key"):
        load_recipe(bad)


def test_cli_options_after_overrides(monkeypatch):
    import t2i.train as T
    from t2i.cli import main

    seen = {}
    monkeypatch.setattr(T, "train", lambda recipe, **kw: seen.update(recipe=recipe, **kw) or Path("runs/x-000"))
    recipe = str(ROOT / "configs/t2i/shapes_stackgan.yaml")
    assert main(["train", recipe, "train.batch_size=8", "--max-steps", "5", "model.ngf=8", "--no-progress"]) == 0
    assert (seen["max_steps"], seen["resume"], seen["progress"]) == (5, None, False)
    assert seen["recipe"]["train"]["batch_size"] == 8 and seen["recipe"]["model"]["ngf"] == 8
    assert main(["train", "--max-steps", "3", recipe]) == 0 and seen["max_steps"] == 3
    # Only options after the recipe (no KEY=VALUE): they are options, not overrides.
    assert main(["train", recipe, "--max-steps", "4", "--no-progress"]) == 0
    assert seen["max_steps"] == 4 and seen["progress"] is False
    assert main(["train", recipe, "train.nope"]) == 2  # not KEY=VALUE: one-line error, exit 2


def test_resume_keeps_the_runs_own_config(monkeypatch, tmp_path):
    """--resume trains on with what the run was trained with (its config.yaml), not with what the recipe file says
    today; only this command's KEY=VALUE overrides change it, and each disagreement with the file is named."""
    import yaml

    import t2i.train as T
    from t2i.cli import main

    seen = {}
    monkeypatch.setattr(T, "train", lambda recipe, **kw: seen.update(recipe=recipe, **kw) or Path("runs/x-000"))
    recipe = str(ROOT / "configs/t2i/shapes_stackgan.yaml")
    run = tmp_path / "runs/shapes_stackgan-000"
    (run / "checkpoints/step-000004").mkdir(parents=True)
    (run / "checkpoints/step-000004/state.json").write_text('{"step": 4}')
    saved = load_recipe(recipe, ["model.ngf=5", "model.z_dim=7", "train.lr_g=0.003"])
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.warns(UserWarning, match=r"says model\.ngf=.* was trained with 5"):
        args = ["train", recipe, "train.lr_g=0.001", "--resume", "latest", "--runs-dir", str(tmp_path / "runs")]
        assert main(args) == 0
    got = seen["recipe"]
    assert (got["model"]["ngf"], got["model"]["z_dim"], got["train"]["lr_g"]) == (5, 7, 0.001)
    assert seen["resume"] == "latest"
    other = tmp_path / "other.yaml"
    other.write_text("family: attngan\nmodel: {}\n")
    assert main(["train", str(other), "--resume", str(run)]) == 2  # a different family: one-line error


def test_init_from_starts_g_from_an_export(tmp_path, text_encoder):
    from safetensors.torch import load_file

    src = _run("stackgan", tmp_path, text_encoder)
    # One step at lr_g=0: the new run's exported generator weights are exactly the source's (BN statistics move).
    run = _run("stackgan", tmp_path, text_encoder, [f"train.init_from={src / 'export'}", "train.lr_g=0"], max_steps=1)
    a, b = (load_file(str(p / "export/generator.safetensors")) for p in (src, run))
    weights = [k for k in a if "running_" not in k and "num_batches" not in k]
    assert a.keys() == b.keys() and len(weights) > 10 and all(torch.equal(a[k], b[k]) for k in weights)
    fresh_run = _run("stackgan", tmp_path, text_encoder, ["train.lr_g=0", "train.sample_every=0"], max_steps=1)
    fresh = load_file(str(fresh_run / "export/generator.safetensors"))
    assert not all(torch.equal(a[k], fresh[k]) for k in weights)
    assert (src / "samples").is_dir() and not (fresh_run / "samples").exists()  # sample_every=0: no grids
    # An export of another architecture is refused, naming what differs.
    with pytest.raises(ValueError, match="ngf"):
        _run("stackgan", tmp_path, text_encoder, [f"train.init_from={src}", "model.ngf=8"], max_steps=0)
    with pytest.raises(FileNotFoundError):
        _run("stackgan", tmp_path, text_encoder, [f"train.init_from={tmp_path / 'nowhere'}"], max_steps=0)


@pytest.mark.parametrize("family", ["stackgan", "attngan"])
def test_d_step_ma_gp_equals_reference(family, text_encoder):
    """The D phase computes MA-GP inline (one batched D forward for real, mismatched and fake); it must equal
    `losses.ma_gp` taken per stage on the real matching pair, at the standardised sentence D reads."""
    from types import SimpleNamespace

    from t2i import losses as L
    from t2i.models.stackgan import downsample_to
    from t2i.train import Batches, DataConfig, GANFamily, TrainConfig, _from_dict

    model = apply_overrides({}, TINY[family])["model"]
    fam = GANFamily(family, model, TrainConfig(gan_loss="hinge", ma_gp_weight=2.0, ma_gp_power=6.0, lambda_damsm=0))
    assert fam.cfg.sentence_norm  # the case whose scale matters
    acc = SimpleNamespace(device=torch.device("cpu"), process_index=0, unwrap_model=lambda m: m)
    fam.bind(acc, text_encoder, fam.modules)
    data_cfg = _from_dict(DataConfig, {"size": 16, "length": 32}, "data")
    batch = Batches(data_cfg, 4, 0, 1, 0).get(0)
    D = fam.modules["D"].eval()  # batch statistics would couple the samples: compare per-sample forwards
    out = fam.d_step(batch, 0)

    s = torch.nn.functional.layer_norm(fam._features(batch)[0].sentence, (384,))
    ref = 0.0
    sizes = fam.cfg.stages if family == "attngan" else [fam.cfg.stage1_resolution, fam.cfg.resolution]  # joint
    assert len(sizes) == len(D.stages)
    for size, stage in zip(sizes, D.stages):
        real = downsample_to(batch["image"], size)
        ref = ref + L.ma_gp(lambda x, t, d=stage: d(x, t)[0], real, s, k=2.0, p=6.0)  # noqa: B023
    assert out["d_gp"].item() > 0
    assert torch.allclose(out["d_gp"], ref, rtol=1e-4)
    out["loss"].backward()  # the penalty is differentiable w.r.t. D (double backward)
    assert all(p.grad is not None for p in D.parameters() if p.requires_grad)


def test_near_miss_negatives_reach_d(text_encoder, tmp_path):
    """train.mismatch=near_miss: D's mismatched term reads the sentence of the image's own scene with one attribute
    changed (seeded by step, so resume draws the same), not another batch caption; a 2-step run trains with it."""
    from types import SimpleNamespace

    import numpy as np

    from t2i.data.shapes import Scene, caption_scene, near_miss
    from t2i.train import Batches, DataConfig, GANFamily, TrainConfig, _from_dict

    model = apply_overrides({}, TINY["stackgan"])["model"]
    fam = GANFamily("stackgan", model, TrainConfig(mismatch="near_miss", lambda_damsm=0))
    fam.bind(SimpleNamespace(device=torch.device("cpu"), process_index=0, unwrap_model=lambda m: m), text_encoder,
             fam.modules)  # fmt: skip
    batch = Batches(_from_dict(DataConfig, {"size": 16, "length": 32}, "data"), 4, 0, 1, 0).get(0)
    got = fam._near_miss_sentences(batch, 7)
    rng = np.random.default_rng([0, 7, 0, 11])
    caps = [caption_scene(near_miss(Scene.from_attributes(a), rng), rng, 1)[0] for a in batch["attributes"]]
    want = text_encoder.encode(caps).sentence
    assert torch.allclose(got, torch.nn.functional.layer_norm(want, want.shape[-1:]), atol=1e-5)
    assert torch.equal(got, fam._near_miss_sentences(batch, 7)) and not torch.equal(got, fam._near_miss_sentences(
        batch, 8))  # fmt: skip
    # mixed encodes only the rows it uses (same draws as near_miss over those images).
    rng = np.random.default_rng([0, 7, 0, 11])
    caps = [caption_scene(near_miss(Scene.from_attributes(batch["attributes"][i]), rng), rng, 1)[0] for i in (1, 3)]
    want = text_encoder.encode(caps).sentence
    assert torch.allclose(fam._near_miss_sentences(batch, 7, [1, 3]), torch.nn.functional.layer_norm(
        want, want.shape[-1:]), atol=1e-5)  # fmt: skip
    no_pool = ["model.word_pool=false", "train.contrastive_mirror=0"]  # near misses come without word features
    run = _run("stackgan", tmp_path, text_encoder, ["train.mismatch=near_miss", *no_pool])
    assert json.loads((run / "export/config.json").read_text())["step"] == 2
    run = _run("stackgan", tmp_path, text_encoder, ["train.mismatch=mixed", *no_pool])
    assert json.loads((run / "export/config.json").read_text())["step"] == 2
    with pytest.raises(ValueError, match="train.mismatch must be 'batch', 'near_miss' or 'mixed'"):
        _run("stackgan", tmp_path, text_encoder, ["train.mismatch=hard"])
    batch["attributes"] = [None] * 4
    with pytest.raises(ValueError, match="needs per-image attributes"):
        fam._near_miss_sentences(batch, 0)


@pytest.mark.parametrize("family", ["stackgan", "attngan"])
def test_contrastive_loss_reaches_both_phases(family, text_encoder, tmp_path):
    """train.contrastive_weight: every stage's D gets image/sentence heads; the D phase contrasts real images with
    their captions, the G phase the fakes; both terms are logged, differentiable and weighted into the loss."""
    from types import SimpleNamespace

    from t2i import losses as L
    from t2i.models.stackgan import downsample_to
    from t2i.train import Batches, DataConfig, GANFamily, TrainConfig, _from_dict

    model = apply_overrides({}, TINY[family])["model"]
    fam = GANFamily(family, model, TrainConfig(contrastive_weight=0.5, contrastive_dim=8, lambda_damsm=0))
    fam.bind(SimpleNamespace(device=torch.device("cpu"), process_index=0, unwrap_model=lambda m: m), text_encoder,
             fam.modules)  # fmt: skip
    batch = Batches(_from_dict(DataConfig, {"size": 16, "length": 32}, "data"), 4, 0, 1, 0).get(0)
    D = fam.modules["D"].eval()  # per-sample forwards, so the reference below sees the same logits
    out = fam.d_step(batch, 0)
    s = torch.nn.functional.layer_norm(fam._features(batch)[0].sentence, (384,))
    ref = 0.0
    sizes = fam.cfg.stages if family == "attngan" else [fam.cfg.stage1_resolution, fam.cfg.resolution]
    for size, stage in zip(sizes, D.stages, strict=True):
        ei, et = stage(downsample_to(batch["image"], size), s, contrastive=True)[2]
        assert ei.shape == et.shape == (4, 8) and torch.allclose(ei.norm(dim=1), torch.ones(4))
        ref = ref + L.contrastive_loss(ei, et, 0.1)
    assert torch.allclose(out["d_con"], ref, rtol=1e-5)
    assert torch.allclose(out["loss"], out["d_adv"] + out["d_gp"] + 0.5 * out["d_con"], rtol=1e-6)
    out["loss"].backward()
    assert all(st.c_img.weight.grad.abs().sum() > 0 and st.c_txt.weight.grad.abs().sum() > 0 for st in D.stages)
    g = fam.g_step(batch, 0)
    assert g["g_con"].item() > 0
    assert torch.allclose(g["loss"], g["g_adv"] + fam.t.kl_weight * g["g_kl"] + 0.5 * g["g_con"], rtol=1e-6)
    G = fam.modules["G"]
    G.zero_grad()
    (0.5 * g["g_con"]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())  # G learns from it
    with pytest.raises(ValueError, match="no contrastive heads"):
        GANFamily(family, model, TrainConfig(lambda_damsm=0)).modules["D"].stages[0](batch["image"][:, :, ::2, ::2],
                                                                                  s, contrastive=True)  # fmt: skip
    # contrastive_near_miss: the chosen images' near misses join the softmax, D's and G's phase alike.
    fam.t.contrastive_near_miss = 0.5
    hard, rows = fam._contrastive_near_misses(batch, 0)
    assert 0 < len(rows) < 4 and hard.shape == (len(rows), 384)
    assert torch.allclose(hard, fam._near_miss_sentences(batch, 0, rows.tolist()))
    other = Batches(_from_dict(DataConfig, {"size": 16, "length": 32}, "data"), 4, 0, 1, 0).get(1)
    other_hard, other_rows = fam._contrastive_near_misses(other, 0)  # a second micro-batch of the same step
    assert torch.equal(other_rows, rows) and torch.allclose(
        other_hard, fam._near_miss_sentences(other, 0, rows.tolist())
    )
    assert not torch.allclose(other_hard, hard)
    ref = 0.0
    for size, stage in zip(sizes, D.stages, strict=True):
        ei, et = stage(downsample_to(batch["image"], size), s, contrastive=True)[2]
        ref = ref + L.contrastive_loss(ei, et, 0.1, hard=stage.embed_text(hard, normed=True), hard_rows=rows)
    assert torch.allclose(fam.d_step(batch, 0)["d_con"], ref, rtol=1e-5)
    assert fam.g_step(batch, 0)["g_con"] > 0
    run = _run(family, tmp_path, text_encoder, ["train.contrastive_weight=1", "train.contrastive_dim=8",
                                                "train.contrastive_near_miss=0.5", "train.contrastive_mirror=0",
                                                "model.word_pool=false"])  # fmt: skip
    log = [json.loads(x) for x in (run / "train.log").read_text().splitlines()]
    assert {"d_con", "g_con"} <= set(log[-1])
    with pytest.raises(ValueError, match="contrastive_near_miss is a fraction"):
        _run("stackgan", tmp_path, text_encoder, ["train.contrastive_near_miss=2"])
    with pytest.raises(ValueError, match="train.contrastive_weight must be >= 0"):
        _run("stackgan", tmp_path, text_encoder, ["train.contrastive_tau=0"])


def test_contrastive_mirror_negatives(text_encoder, tmp_path):
    """train.contrastive_mirror: images whose caption names a side get the caption with left and right swapped as
    the extra negative of their softmax; captions that name no side get none (their mirror is the same scene)."""
    from types import SimpleNamespace

    from t2i import losses as L
    from t2i.models.stackgan import downsample_to
    from t2i.text import mirror_caption
    from t2i.train import GANFamily, TrainConfig

    model = apply_overrides({}, TINY["stackgan"])["model"]
    fam = GANFamily("stackgan", model, TrainConfig(contrastive_weight=1, contrastive_dim=8, contrastive_mirror=1.0,
                                                   lambda_damsm=0))  # fmt: skip
    fam.bind(SimpleNamespace(device=torch.device("cpu"), process_index=0, unwrap_model=lambda m: m), text_encoder,
             fam.modules)  # fmt: skip
    caps = ["a red circle in the top left corner", "a blue square at the top", "a star right of a heart",
            "a green plus above a red box"]  # fmt: skip
    g = torch.Generator().manual_seed(0)
    batch = {"captions": caps, "image": torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, "attributes": [None] * 4}
    hard, rows = fam._contrastive_near_misses(batch, 0)
    assert rows.tolist() == [0, 2]  # the two captions that name a side, all of them at fraction 1
    want = text_encoder.encode(["a red circle in the top right corner", "a star left of a heart"]).sentence
    hard = fam._hard_text(hard, fam.modules["D"])  # the mirrored captions' features, as D's stages read them
    assert torch.allclose(hard, torch.nn.functional.layer_norm(want, want.shape[-1:]), atol=1e-5)
    D = fam.modules["D"].eval()
    s = torch.nn.functional.layer_norm(fam._features(batch)[0].sentence, (384,))
    ref = 0.0
    for size, stage in zip([fam.cfg.stage1_resolution, fam.cfg.resolution], D.stages, strict=True):
        ei, et = stage(downsample_to(batch["image"], size), s, contrastive=True)[2]
        ref = ref + L.contrastive_loss(ei, et, 0.1, fam._features(batch)[2], stage.embed_text(hard, normed=True),
                                       rows)  # fmt: skip
    assert torch.allclose(fam.d_step(batch, 0)["d_con"], ref, rtol=1e-5)
    assert mirror_caption("Left: a box, rightmost") == "Right: a box, leftmost"
    assert mirror_caption("a bright star at the top") == "a bright star at the top"  # whole words only
    run = _run("stackgan", tmp_path, text_encoder, ["train.contrastive_dim=8", "train.contrastive_mirror=0.5"])
    assert "g_con" in json.loads((run / "train.log").read_text().splitlines()[-1])
    with pytest.raises(ValueError, match="both add the one extra negative per image: set one of them"):
        _run("stackgan", tmp_path, text_encoder, ["train.contrastive_mirror=0.5", "train.contrastive_near_miss=0.5"])
    with pytest.raises(ValueError, match="contrastive_mirror is a fraction"):
        _run("stackgan", tmp_path, text_encoder, ["train.contrastive_mirror=-1"])


@pytest.mark.parametrize("family", ["stackgan", "attngan"])
def test_word_pool_trains_in_both_phases_and_reloads(family, text_encoder, tmp_path):
    """model.word_pool: G and D each pool the word features into the sentence they read. In D's phase its pool gets
    gradient (MA-GP is taken at the pooled sentence), in G's phase G's pool; the 2-step run's export reloads to the
    same samples; near-miss negatives (which come without words) are refused by name."""
    from types import SimpleNamespace

    from t2i.train import Batches, DataConfig, GANFamily, TrainConfig, _from_dict

    model = apply_overrides({}, TINY[family] + ["model.word_pool=true"])["model"]
    fam = GANFamily(family, model, TrainConfig(contrastive_weight=1, contrastive_dim=8, contrastive_mirror=1,
                                               lambda_damsm=0, ma_gp_weight=2.0))  # fmt: skip
    fam.bind(SimpleNamespace(device=torch.device("cpu"), process_index=0, unwrap_model=lambda m: m), text_encoder,
             fam.modules)  # fmt: skip
    batch = Batches(_from_dict(DataConfig, {"size": 16, "length": 32}, "data"), 8, 0, 1, 0).get(0)
    D, G = fam.modules["D"], fam.modules["G"]
    with torch.no_grad():  # past the zero-initialised projection, so every pool parameter is in the graph
        D.pool.out.weight.normal_(0, 0.01)
        G.pool.out.weight.normal_(0, 0.01)
    out = fam.d_step(batch, 0)
    assert out["d_gp"] > 0
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.pool.parameters())
    G.zero_grad()
    fam.g_step(batch, 0)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.pool.parameters())
    run = _run(family, tmp_path, text_encoder, ["model.word_pool=true", "train.contrastive_dim=8",
                                                "train.contrastive_mirror=1"])  # fmt: skip
    _reloads_identically(run, text_encoder)
    assert load_pipeline(run / "export").generator.pool is not None
    with pytest.raises(ValueError, match="near-miss captions .* are not supported with it"):
        _run(family, tmp_path, text_encoder, ["model.word_pool=true", "train.mismatch=near_miss"])


@pytest.mark.parametrize("family", ["stackgan", "attngan"])
def test_image_contrastive_term_reaches_g(family, text_encoder, tmp_path):
    """train.contrastive_image_weight: in G's phase every stage's D image head embeds the fakes and (without grad)
    the real images of their captions; the term equals a per-stage reference, is weighted into G's loss and trains G
    only. Refused without the contrastive heads."""
    from types import SimpleNamespace

    from t2i import losses as L
    from t2i.models.stackgan import downsample_to
    from t2i.train import Batches, DataConfig, GANFamily, TrainConfig, _from_dict

    model = apply_overrides({}, TINY[family])["model"]
    tcfg = TrainConfig(contrastive_weight=0.5, contrastive_image_weight=2.0, contrastive_dim=8, lambda_damsm=0)
    fam = GANFamily(family, model, tcfg)
    fam.bind(SimpleNamespace(device=torch.device("cpu"), process_index=0, unwrap_model=lambda m: m), text_encoder,
             fam.modules)  # fmt: skip
    batch = Batches(_from_dict(DataConfig, {"size": 16, "length": 32}, "data"), 4, 0, 1, 0).get(0)
    D, G = fam.modules["D"].eval(), fam.modules["G"]
    torch.manual_seed(0)
    g = fam.g_step(batch, 0)
    torch.manual_seed(0)  # the same fakes again, for the reference
    f = fam._features(batch)[0]
    fakes = fam._g_forward(G, batch, f, 0, 1).images[-len(D.stages) :]
    ref = 0.0
    for x, stage in zip(fakes, D.stages, strict=True):
        ef = stage(x, f.sentence, contrastive=True)[2][0]
        er = stage(downsample_to(batch["image"], x.shape[-1]), f.sentence, contrastive=True)[2][0]
        ref = ref + L.image_contrastive_loss(ef, er, 0.1, fam._features(batch)[2])
    assert torch.allclose(g["g_con_img"], ref, rtol=1e-4)
    assert torch.allclose(g["loss"], g["g_adv"] + fam.t.kl_weight * g["g_kl"] + 0.5 * g["g_con"]
                          + 2.0 * g["g_con_img"], rtol=1e-5)  # fmt: skip
    G.zero_grad()
    D.zero_grad()
    g["g_con_img"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    run = _run(family, tmp_path, text_encoder, ["train.contrastive_weight=1", "train.contrastive_dim=8",
                                                "train.contrastive_image_weight=1"])  # fmt: skip
    log = [json.loads(x) for x in (run / "train.log").read_text().splitlines()]
    assert "g_con_img" in log[-1] and math.isfinite(log[-1]["g_con_img"])
    with pytest.raises(ValueError, match="contrastive_image_weight must be >= 0 and needs train.contrastive_weight"):
        _run("stackgan", tmp_path, text_encoder, ["train.contrastive_weight=0", "train.contrastive_image_weight=1"])


def test_ema_update_reads_the_device_a_fixed_number_of_times():
    """On a GPU every tensor -> Python number read is a device sync: the EMA update must not do one per parameter
    (it did, ~190 a StackGAN step). Counted as aten._local_scalar_dense calls, for 2 and for 40 layers."""
    from torch.optim.swa_utils import AveragedModel
    from torch.utils._python_dispatch import TorchDispatchMode

    from t2i.train import ema_with_warmup

    class Reads(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Reads.n += func.overloadpacket == torch.ops.aten._local_scalar_dense
            return func(*args, **(kwargs or {}))

    counts = []
    for layers in (2, 40):
        net = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(layers)])
        ema = AveragedModel(net, multi_avg_fn=ema_with_warmup(0.999), use_buffers=True)
        ema.update_parameters(net)
        Reads.n = 0
        with Reads():
            ema.update_parameters(net)
        counts.append(Reads.n)
    assert counts[0] == counts[1] <= 2, counts


def test_text_layer_travels_from_recipe_to_export_and_damsm_must_match(tmp_path, text_encoder):
    """data.text_layer: DAMSM and AttnGAN train on that layer's word features, the export records it, and a
    reloaded pipeline encodes with it on its own; a DAMSM of another layer, or an encoder reading another layer, is
    refused by name before any training."""
    from t2i.text import TextEncoder

    enc2 = TextEncoder(text_encoder.name_or_path, max_length=32, layer=2)
    damsm = _run("damsm", tmp_path, enc2, ["data.text_layer=2"])
    assert json.loads((damsm / "export/config.json").read_text())["text_encoder"]["layer"] == 2
    run = _run("attngan", tmp_path, enc2, [f"model.damsm_checkpoint={damsm}", "data.text_layer=2"])
    assert json.loads((run / "export/config.json").read_text())["text_encoder"]["layer"] == 2
    pipe = load_pipeline(run / "export")
    assert pipe.text_layer == 2 and pipe.text_encoder.layer == 2  # its own (shared) encoder, not the default
    caps = ["a small red circle left of a large blue star"]
    given = load_pipeline(run / "export")
    given._encoder = enc2
    assert torch.allclose(pipe(caps, 2, seed=1), given(caps, 2, seed=1), atol=1e-2)  # fp16 cache vs fresh
    with pytest.raises(ValueError, match="trained on text-encoder layer 2 but this run has data.text_layer=-1"):
        _run("attngan", tmp_path, text_encoder, [f"model.damsm_checkpoint={damsm}"])
    with pytest.raises(ValueError, match="given reads layer -1, the recipe data.text_layer=2"):
        _run("stackgan", tmp_path, text_encoder, ["data.text_layer=2"])


def test_data_two_object_prob_sets_the_training_mix_and_is_checked():
    from t2i.train import Batches, DataConfig, _from_dict

    def share(**kw):
        ds = Batches(_from_dict(DataConfig, {"size": 16, "length": 200, **kw}, "data"), 4, 0, 1, 0).ds
        return sum(len(ds[i].attributes["objects"]) == 2 for i in range(len(ds))) / len(ds)

    assert 0.35 < share() < 0.65  # the generator's default, 0.5
    assert share(two_object_prob=1.0) == 1.0 and share(two_object_prob=0.0) == 0.0
    with pytest.raises(ValueError, match=r"two_object_prob must be in \[0, 1\]"):
        share(two_object_prob=1.5)
    with pytest.raises(ValueError, match="for the shapes dataset"):
        _from_dict(DataConfig, {"dataset": "/some/cub", "two_object_prob": 0.9}, "data").shapes_kwargs()


def _layout_source(tmp_path, channels=4):
    """A tiny trained-looking LayoutNet export (layout_net/ folder, as the diffusion_layout bundle has) for
    model.layout_from, and the overrides that give a GAN recipe a layout stage of its size."""
    from t2i.models.diffusion import LayoutNet

    torch.manual_seed(0)
    LayoutNet(384, channels, 8, 1, contextual=True).save_pretrained(tmp_path / "lay/layout_net")
    return [f"model.layout_channels={channels}", "model.layout_width=8", "model.layout_layers=1",
            "model.layout_contextual=true", f"model.layout_from={tmp_path / 'lay'}"]  # fmt: skip


@pytest.mark.parametrize("family", ["stackgan", "attngan"])
def test_layout_stage_starts_as_the_source_and_trains(family, text_encoder, tmp_path):
    """A generator grown a layout stage from an export without one draws what the export drew (the injections start
    at zero), whatever map it is given; 2 steps with the layout and object discriminators train the injections and
    the painting projections, keep the box predictor frozen, log their losses, and the export reloads to identical
    samples (the layout predicted from the caption)."""
    from safetensors.torch import load_file

    from t2i.train import GANFamily, TrainConfig

    src = _run(family, tmp_path, text_encoder, ["name=src"])
    lay = _layout_source(tmp_path)
    fam = GANFamily(family, load_recipe(ROOT / f"configs/t2i/shapes_{family}.yaml", TINY[family] + lay)["model"],
                    TrainConfig(init_from=str(src), lambda_damsm=0))  # fmt: skip
    a = load_pipeline(src)
    b = T2IPipeline(family, fam.modules["G"], fam.cfg, text_encoder=text_encoder)
    a._encoder = text_encoder
    caps = ["a small red circle in the top left corner", "a large blue square left of a green star"]
    assert b.generator.layout_net is not None and torch.equal(a(caps, 2, seed=1), b(caps, 2, seed=1))
    f = text_encoder.encode(caps)
    z = torch.randn(2, b.z_dim)
    eps = [torch.zeros(2, b.model_cfg.cond_dim)] * b.generator.num_ca
    ref = a.generator(z, f.sentence, f.words, f.mask, ca_eps=eps).images[-1]
    for m in (torch.zeros(2, 4, 16, 16), torch.randn(2, 4, 16, 16)):
        assert torch.equal(ref, b.generator(z, f.sentence, f.words, f.mask, ca_eps=eps, layout=m).images[-1])

    run = _run(family, tmp_path, text_encoder, lay + [f"train.init_from={src}", "train.object_d_weight=1",
                                                      "name=trained"])  # fmt: skip
    log = [json.loads(x) for x in (run / "train.log").read_text().splitlines()]
    assert all(k in log[-1] and math.isfinite(log[-1][k]) for k in ("d_layout", "g_layout", "d_object", "g_object"))
    # (the raw G: the EMA's arithmetic moves a constant weight by rounding)
    before, after = fam.modules["G"].state_dict(), load_file(str(run / "checkpoints/step-000002/G.safetensors"))
    painting = ("layout_net.proj.", "layout_net.hproj.")
    predictor = [k for k in after if k.startswith("layout_net.") and not k.startswith(painting)]
    assert predictor and all(torch.equal(before[k], after[k]) for k in predictor)
    injections = [k for k in after if ".lay." in k and k.endswith("weight")]
    assert injections and all(before[k].abs().sum() == 0 < after[k].abs().sum() for k in injections)
    assert not torch.equal(before["layout_net.proj.weight"], after["layout_net.proj.weight"])
    _reloads_identically(run, text_encoder)


def test_layout_stage_errors_name_the_problem(text_encoder, tmp_path):
    lay = _layout_source(tmp_path)
    with pytest.raises(ValueError, match="needs a trained LayoutNet: set model.layout_from"):
        _run("stackgan", tmp_path, text_encoder, lay[:-1], max_steps=0)
    with pytest.raises(ValueError, match="layout_from needs the layout stage"):
        _run("stackgan", tmp_path, text_encoder, lay[-1:], max_steps=0)
    with pytest.raises(ValueError, match="object_d_weight > 0 needs the layout stage"):
        _run("stackgan", tmp_path, text_encoder, ["train.object_d_weight=1"], max_steps=0)
    with pytest.raises(ValueError, match=r"its LayoutNet differs from this recipe's in \['width'\]"):
        _run("stackgan", tmp_path, text_encoder, lay + ["model.layout_width=16"], max_steps=0)
    with pytest.raises(ValueError, match="no layout_net/ folder there"):
        _run("stackgan", tmp_path, text_encoder, lay[:-1] + [f"model.layout_from={tmp_path}"], max_steps=0)


def test_object_crops_equal_a_naive_slice_and_reach_the_image():
    from t2i.nn import crop_boxes

    img = torch.randn(2, 3, 16, 16, requires_grad=True)
    boxes = torch.tensor([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.5]])
    crops = crop_boxes(img, torch.tensor([1, 0]), boxes, 8, margin=0)
    assert torch.allclose(crops[0], img[1, :, 8:16, 4:12], atol=1e-5)
    assert torch.allclose(crops[1], img[0, :, 0:8, 0:8], atol=1e-5)
    crops.sum().backward()
    assert img.grad[1, :, 8:16, 4:12].abs().min() > 0 and img.grad[1, :, :8].abs().sum() == 0
