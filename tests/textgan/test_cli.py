import json
import subprocess
import sys

import pytest

from textgan import seqgan
from textgan.cli import main

TINY = [
    "n_train=64", "n_valid=32", "n_test=32", "mle_epochs=2", "d_pretrain_rounds=1", "d_pretrain_epochs=1",
    "adv_steps=2", "d_steps=1", "d_epochs=1", "n_neg=32", "rollout_num=2", "eval_samples=32", "eval_every=1",
    "tensorboard=false", "batch_size=16", "save_every=1",
]  # fmt: skip


def _text(corpus):
    return [f"train_file={corpus / 'train.txt'}", f"test_file={corpus / 'test.txt'}", "n_train=0", "n_test=0"]


def _run(tmp_path, recipe, extra=()):
    assert main(["train", recipe, *TINY, *extra, "--runs-dir", str(tmp_path / "runs")]) == 0
    runs = sorted((tmp_path / "runs").glob(f"{recipe}-*"))
    return runs[-1]


@pytest.mark.parametrize("recipe", ["oracle_seqgan", "oracle_seqgan_paper", "oracle_mle"])
def test_oracle_recipe_smoke(tmp_path, recipe, oracle_npz, capsys):
    run = _run(tmp_path, recipe)
    assert (run / "config.yaml").exists() and (run / "model" / "generator.safetensors").exists()
    assert (run / "checkpoint" / "state.safetensors").exists() and (run / "training-curves.png").exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["phase"] == ("mle" if recipe == "oracle_mle" else "adv") and "nll_oracle" in rows[-1]
    timing = json.loads((run / "timing_summary.json").read_text())
    assert "mle_epoch" in timing and (recipe == "oracle_mle" or "g_step" in timing)
    # eval: flat JSON with the oracle metrics
    out = tmp_path / "e.json"
    assert main(["eval", str(run), "-n", "64", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {"nll_oracle", "nll_test"} <= set(res) and all(not isinstance(v, dict) for v in res.values())
    # --seed: independent samples re-measure NLL-oracle; NLL-test (fixed held-out data) does not move
    assert main(["eval", str(run), "-n", "64", "--seed", "1", "--json", str(out)]) == 0
    res1 = json.loads(out.read_text())
    assert res1["seed"] == 1 and res["seed"] == 0 and res1["nll_test"] == res["nll_test"]
    assert res1["nll_oracle"] != res["nll_oracle"]
    # wrong task: a clear message, exit code 2
    capsys.readouterr()
    assert main(["eval", str(run), "--task", "text"]) == 2
    assert "is for task 'oracle'" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["coco_mle", "coco_seqgan"])
def test_text_recipe_smoke_sample_eval(tmp_path, recipe, corpus, capsys):
    run = _run(tmp_path, recipe, _text(corpus))
    assert (run / "model" / "vocab.json").exists()
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "5", "--seed", "1", "--temperature", "0.8"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 5
    assert main(["eval", str(run), "-n", "50"]) == 0
    res = json.loads(capsys.readouterr().out)
    for k in ("bleu2", "bleu5", "self_bleu2", "self_bleu5", "nll_test"):
        assert 0 <= res[k] < 100


def test_sentencepiece_and_init_from(tmp_path, corpus):
    mle = _run(tmp_path, "coco_mle", [*_text(corpus), "tokenizer=sentencepiece", "vocab_size=40"])
    assert (mle / "model" / "tokenizer.model").exists()
    gan = _run(tmp_path, "coco_seqgan", [*_text(corpus), "tokenizer=sentencepiece", "vocab_size=40",
                                         f"init_from={mle / 'model'}", "mle_epochs=0"])  # fmt: skip
    assert (gan / "model" / "tokenizer.model").read_bytes() == (mle / "model" / "tokenizer.model").read_bytes()


def test_resume_after_kill(tmp_path, corpus, monkeypatch):
    real = seqgan.Logger.timing

    def dies_in_epoch_2(self, phase, step, *a, **k):
        if phase == "mle_epoch" and step == 2:
            raise KeyboardInterrupt  # killed after the epoch-1 checkpoint
        return real(self, phase, step, *a, **k)

    monkeypatch.setattr(seqgan.Logger, "timing", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        main(["train", "coco_mle", *TINY, *_text(corpus), "--runs-dir", str(tmp_path / "runs")])
    monkeypatch.setattr(seqgan.Logger, "timing", real)
    run = tmp_path / "runs" / "coco_mle-001"
    assert not (run / "model").exists()
    assert main(["train", "coco_mle", "mle_epochs=3", "--resume", "latest", "--runs-dir", str(tmp_path / "runs")]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3] and (run / "model" / "config.json").exists()
    assert len((run / "command.txt").read_text().splitlines()) == 2


def test_bad_input_messages(tmp_path, corpus, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bin.txt").write_bytes(b"ok\n\xc3\x28\n")
    (tmp_path / "long.txt").write_text("w " * 100 + "\n")
    for f, msg in (("empty.txt", "empty corpus"), ("bin.txt", "not valid UTF-8"), ("long.txt", "over the limit")):
        rc = main(["train", "coco_mle", *TINY, f"train_file={tmp_path / f}", "--runs-dir", str(tmp_path / "r")])
        assert rc == 2 and msg in capsys.readouterr().err
    assert main(["train", "coco_mle", "no_such_key=1"]) == 2
    assert "unknown config keys" in capsys.readouterr().err
    assert main(["train", "oracle_seqgan", "pg_reduction=median"]) == 2
    assert "pg_reduction mean|sum" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a textgan checkpoint" in capsys.readouterr().err


def test_help_and_recipes():
    out = subprocess.run([sys.executable, "-m", "textgan.cli", "--help"], capture_output=True, text=True, check=True)
    assert "examples:" in out.stdout and "textgan sweep" in out.stdout
    out = subprocess.run([sys.executable, "-m", "textgan.cli", "recipes"], capture_output=True, text=True, check=True)
    assert all(r in out.stdout for r in ("oracle_seqgan", "oracle_mle", "coco_seqgan", "coco_mle"))


def test_sweep_plot(tmp_path, corpus):
    run = _run(tmp_path, "coco_mle", _text(corpus))
    out = tmp_path / "sweep.png"
    assert main(["sweep", str(run), str(run), "--labels", "a", "b", "--temperatures", "0.8", "1.2", "-n", "40",
                 "--out", str(out)]) == 0  # fmt: skip
    data = json.loads(out.with_suffix(".json").read_text())
    assert out.exists() and len(data["curves"]["a"]) == 2 and "bleu5" in data["curves"]["a"][0]


def test_textgan_does_not_import_t2i():
    code = "import sys, textgan.cli, textgan.seqgan; assert not [m for m in sys.modules if 't2i' in m]"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bundled_yaml_configs_load():
    from pathlib import Path

    cfgs = sorted((Path(__file__).parents[2] / "configs" / "textgan").glob("*.yaml"))
    assert len(cfgs) >= 5
    for p in cfgs:
        cfg = seqgan.load_config(str(p))
        assert cfg.name in seqgan.RECIPES and cfg.task in ("oracle", "text")


@pytest.mark.parametrize("fast", [False, True])
def test_bench_smoke(fast):
    from textgan.bench import run_bench

    kw = {"d_precision": "bf16", "fused_adam": True} if fast else {}
    res = run_bench(mle_seqs=64, d_seqs=64, rollouts=1, **kw)
    assert all(res[k]["wall_s"] > 0 for k in ("mle_epoch", "d_epoch", "g_step", "bleu_selfbleu_10k"))
    assert res["matmul_gflops"] > 0 and res["d_epoch"]["floor_s"] > 0
    assert ("matmul_gflops_bf16" in res) == fast and res["d_precision"] == ("bf16" if fast else "fp32")
    assert res["paper_schedule"]["hours"] > 0 and res["paper_schedule"]["quoted_textgan_pytorch_hours"] == 18.38


def test_paper_schedule_arithmetic():
    """120 MLE epochs + (50 x 3 + 200 x 5 x 3) discriminator epochs + 200 g-steps, by hand."""
    from textgan.bench import QUOTED_TEXTGAN_PYTORCH, schedule_seconds

    assert schedule_seconds(1.0, 0.0, 0.0) == 120 and schedule_seconds(0.0, 1.0, 0.0) == 3150
    assert schedule_seconds(0.0, 0.0, 1.0) == 200
    assert schedule_seconds(**QUOTED_TEXTGAN_PYTORCH) == 120 * 4.4 + 3150 * 19 + 200 * 29


def test_fast_discriminator_settings_train_and_resume(tmp_path, oracle_npz, monkeypatch):
    """d_precision=bf16 + fused_adam=true through the CLI: trains, checkpoints (the fused optimizers' state too),
    resumes after a kill in the adversarial phase; a bad d_precision is refused by name."""
    real = seqgan.Logger.timing

    def dies_in_g_step_2(self, phase, step, *a, **k):
        if phase == "g_step" and step == 2:
            raise KeyboardInterrupt  # killed after the adversarial step-1 checkpoint
        return real(self, phase, step, *a, **k)

    monkeypatch.setattr(seqgan.Logger, "timing", dies_in_g_step_2)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "oracle_seqgan", ["d_precision=bf16", "fused_adam=true"])
    monkeypatch.setattr(seqgan.Logger, "timing", real)
    run = tmp_path / "runs" / "oracle_seqgan-001"
    assert seqgan.load_config(str(run / "config.yaml")).d_precision == "bf16"
    assert main(["train", "oracle_seqgan", "--resume", str(run), "--runs-dir", str(tmp_path / "runs")]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["phase"] == "adv"] == [1, 2] and (run / "model" / "config.json").exists()
    with pytest.raises(ValueError, match="d_precision must be fp32|bf16"):
        seqgan.load_config("oracle_seqgan", ["d_precision=fp16"])


def test_bench_counts_the_discriminators_flops_by_hand():
    """The D epoch's FLOPs (what its GFLOP/s and floor are computed from) equal a hand count of the SeqGAN CNN:
    per sequence, each filter size k with n filters is n * k * emb MACs at each of T - k + 1 positions, the highway
    layer d x 2d and the output d x 2 (d = all filters); training = forward + grad-input + grad-weight = 3x."""
    import torch
    import torch.nn.functional as F

    from textgan.bench import train_flops
    from textgan.models import Discriminator, DiscriminatorConfig

    c, T, B = DiscriminatorConfig(vocab_size=50), 20, 4
    d = sum(c.num_filters)
    macs = sum(n * k * c.emb_dim * (T - k + 1) for k, n in zip(c.filter_sizes, c.num_filters)) + d * 2 * d + d * 2
    dis = Discriminator(c)
    x = torch.randint(0, 50, (B, T))
    assert train_flops(lambda x: F.cross_entropy(dis(x), torch.zeros(B, dtype=torch.long)), x) == 3 * 2 * macs * B


@pytest.mark.parametrize("name", ["oracle_mle", "oracle_seqgan", "coco_mle", "coco_seqgan"])
def test_bundled_checkpoints_load_and_are_small(name):
    from pathlib import Path

    from textgan.checkpoint import load_generator

    d = Path(__file__).parents[2] / "checkpoints" / "textgan" / name
    if not d.exists():
        pytest.skip("bundled checkpoint not present")
    gen, cfg, tok = load_generator(d, expect_task="oracle" if name.startswith("oracle") else "text")
    assert (tok is None) == name.startswith("oracle") and (d / "README.md").exists()
    assert sum(f.stat().st_size for f in d.iterdir()) < 5_000_000
    assert gen.sample(3).shape[0] == 3


@pytest.mark.slow
def test_oracle_mle_reaches_a_bar(tmp_path, oracle_npz):
    """Real training: 5 MLE epochs on the oracle data beat a uniform generator by far (11.4 -> < 9.7 NLL-oracle)."""
    run = _run(tmp_path, "oracle_mle", ["n_train=10000", "n_valid=2000", "n_test=2000", "mle_epochs=5",
                                        "eval_every=5", "eval_samples=2000", "batch_size=64"])  # fmt: skip
    row = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert row["nll_oracle"] < 9.7 and row["nll_test"] < 7.8
