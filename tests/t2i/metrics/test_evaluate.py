"""evaluate(), bad input, the evaluator round trip, `t2i eval` and `t2i compare` end to end on tiny fixtures."""

import json
from dataclasses import asdict

import pytest
import torch

from t2i.cli import main
from t2i.metrics import METRICS, MetricError, evaluate
from t2i.metrics.networks import load_evaluator

FAST = ["attribute_accuracy", "fid", "kid", "diversity", "speed"]


def test_registry_lists_every_metric():
    assert set(METRICS) == {"attribute_accuracy", "fid", "kid", "r_precision", "clip_score", "diversity", "speed"}


def test_evaluator_save_load_round_trip(tiny_evaluator):
    ev = load_evaluator(tiny_evaluator)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    again = load_evaluator(tiny_evaluator)
    assert torch.allclose(ev.recognizer(x), again.recognizer(x))
    assert ev.recognizer.features(x).shape == (4, 16) and ev.matcher.embed_images(x).shape == (4, 8)
    with pytest.raises(ValueError, match="trained on 16x16 images, got 32x32"):
        ev.recognizer(torch.zeros(1, 3, 32, 32))
    with pytest.raises(FileNotFoundError, match="no evaluator"):
        load_evaluator(tiny_evaluator / "missing")


def test_evaluate_real_and_fake_flat_results(tiny_evaluator, fake_pipeline):
    real = evaluate("real", "shapes", FAST, num_samples=120, evaluator=tiny_evaluator, progress=False)
    pipe = fake_pipeline(16)
    fake = evaluate(pipe, "shapes", FAST, num_samples=120, evaluator=tiny_evaluator, progress=False)
    for r in (real, fake):
        assert all(not isinstance(v, (dict, list)) for v in r.values())  # flat
        assert 0.0 <= r["attribute_accuracy"] <= 1.0 and r["fid"] >= 0 and r["num_samples"] == 120
    # Noise is further from real images than other real images are (the real-vs-real floor).
    assert fake["fid"] > real["fid"]
    assert fake["images_per_second_bs1"] > 0 and fake["latency_ms_bs1"] > 0 and "CPU" in fake["speed_device"]
    assert "images_per_second_bs1" not in real  # speed has no meaning for real images
    assert real["diversity"] > 0
    # Same seed -> same captions -> same figures.
    again = evaluate(pipe, "shapes", ["fid"], num_samples=120, evaluator=tiny_evaluator, progress=False)
    assert again["fid"] == fake["fid"]


def test_diversity_detects_mode_collapse(tiny_evaluator, fake_pipeline):
    collapsed = fake_pipeline(16, images=torch.zeros(1000, 3, 16, 16))
    r = evaluate(collapsed, "shapes", ["diversity"], num_samples=20, evaluator=tiny_evaluator, progress=False)
    noisy = evaluate(fake_pipeline(16), "shapes", ["diversity"], num_samples=20, evaluator=tiny_evaluator,
                     progress=False)  # fmt: skip
    assert r["diversity"] < 1e-6 < noisy["diversity"]


def test_bad_input_errors_name_the_problem(tiny_evaluator, fake_pipeline, tmp_path):
    with pytest.raises(MetricError, match="unknown metric.*'sharpness'"):
        evaluate("real", "shapes", ["fid", "sharpness"], evaluator=tiny_evaluator)
    with pytest.raises(MetricError, match="resolution mismatch.*32x32.*16x16"):
        evaluate(fake_pipeline(32), "shapes", ["fid"], num_samples=20, evaluator=tiny_evaluator, progress=False)
    with pytest.raises(MetricError, match="kid needs num_samples >= its subset size 100, got 50"):
        evaluate("real", "shapes", ["kid"], num_samples=50, evaluator=tiny_evaluator, progress=False)
    # A dataset without attributes: attribute metrics are refused by name.
    from PIL import Image

    for i in range(6):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    rows = [{"file_name": f"{i}.png", "text": f"a picture number {i}"} for i in range(6)]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(MetricError, match="attribute_accuracy needs a dataset with ground-truth attributes"):
        evaluate("real", str(tmp_path), ["attribute_accuracy"], num_samples=3, evaluator=tiny_evaluator,
                 progress=False)  # fmt: skip
    # ...while FID on it works with an evaluator given, and is refused by name without one.
    r = evaluate("real", str(tmp_path), ["fid"], num_samples=3, evaluator=tiny_evaluator, progress=False)
    assert r["fid"] >= 0
    with pytest.raises(MetricError, match="no evaluation networks for dataset"):
        evaluate("real", str(tmp_path), ["fid"], num_samples=3, progress=False)


def test_cli_eval_real_and_checkpoint(tiny_evaluator, fake_pipeline, tmp_path, monkeypatch, capsys):
    out = tmp_path / "real.json"
    log = tmp_path / "log.jsonl"
    args = ["--num-samples", "20", "--metrics", "attribute_accuracy,fid", "--evaluator", str(tiny_evaluator),
            "--quiet"]  # fmt: skip
    assert main(["eval", "real", *args, "--json", str(out), "--log", str(log)]) == 0
    res = json.loads(out.read_text())
    assert res["generator"] == "real" and "attribute_accuracy" in res and "fid" in res
    assert len(log.read_text().splitlines()) == 1
    assert "attribute_accuracy" in capsys.readouterr().out
    # A checkpoint folder: the run is appended to eval.jsonl next to it.
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    monkeypatch.setattr("t2i.metrics.cli.load_generator", lambda t: "real" if t == "real" else fake_pipeline(16))
    assert main(["eval", str(ckpt), *args]) == 0
    assert main(["eval", str(ckpt), *args]) == 0
    rows = [json.loads(x) for x in (ckpt / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["generator"] == "fake" and rows[0]["fid"] == rows[1]["fid"]
    # Bad input through the CLI: one clear line, exit status 2.
    assert main(["eval", "real", "--metrics", "nope", "--evaluator", str(tiny_evaluator)]) == 2
    assert "unknown metric" in capsys.readouterr().err


def test_cli_eval_missing_checkpoint(capsys):
    assert main(["eval", "/nonexistent/ckpt", "--quiet"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_compare_writes_report_grid_and_plots(tiny_evaluator, fake_pipeline, tmp_path, monkeypatch):
    monkeypatch.setattr("t2i.metrics.cli.load_generator", lambda t: fake_pipeline(16))
    a, b = tmp_path / "model_a", tmp_path / "model_b"
    a.mkdir(), b.mkdir()
    caps = tmp_path / "caps.txt"
    caps.write_text("a red circle in the centre\n\na small blue square at the top\n")
    out = tmp_path / "cmp"
    rc = main(["compare", str(a), str(b), "--out", str(out), "--num-samples", "20", "--metrics",
               "attribute_accuracy,fid,diversity,speed", "--evaluator", str(tiny_evaluator), "--quiet",
               "--captions", str(caps)])  # fmt: skip
    assert rc == 0
    for f in ("report.md", "grid.png", "metrics.png", "quality_vs_latency.png", "results.json"):
        assert (out / f).is_file(), f
    report = (out / "report.md").read_text()
    assert "| real (held-out) |" in report and "| model_a |" in report and "| model_b |" in report
    from PIL import Image

    with Image.open(out / "grid.png") as g:  # 2 caption rows, 2 model columns
        assert g.size[0] > 2 * 128 and 2 * 128 < g.size[1] < 3 * 128 + 60
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]) == {"model_a", "model_b"} and res["reference"]["generator"] == "real"


def _tiny_stackgan(path, resolution):
    from t2i.models.stackgan import StackGANConfig
    from t2i.pipelines import build_generator, export_generator

    torch.manual_seed(0)
    cfg = dict(asdict(StackGANConfig(resolution=resolution, stage1_resolution=resolution, ngf=4, ndf=4)))
    G, mcfg = build_generator("stackgan", cfg)
    return export_generator(path, "stackgan", G, mcfg)


def test_cli_eval_end_to_end_on_a_tiny_real_checkpoint(tiny_evaluator, tmp_path, capsys):
    """A real (untrained, 16x16) StackGAN checkpoint through load_pipeline -> t2i eval; 32x32 is refused."""
    ckpt = _tiny_stackgan(tmp_path / "stackgan16", 16)
    out = tmp_path / "r.json"
    assert main(["eval", str(ckpt), "--num-samples", "12", "--metrics", "attribute_accuracy,fid,speed",
                 "--evaluator", str(tiny_evaluator), "--quiet", "--json", str(out)]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    assert res["generator"] == "stackgan" and res["fid"] > 0 and res["images_per_second_bs16"] > 0
    assert (ckpt / "eval.jsonl").is_file()
    big = _tiny_stackgan(tmp_path / "stackgan32", 32)
    capsys.readouterr()
    assert main(["eval", str(big), "--metrics", "fid", "--evaluator", str(tiny_evaluator), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "resolution mismatch" in err and "32x32" in err and "16x16" in err


def test_standard_metrics_need_local_weights(tiny_evaluator, tmp_path):
    """Inception/CLIP metrics never download: without local weights they are refused by name."""
    with pytest.raises(MetricError, match="clip_score needs a local CLIP model folder"):
        evaluate("real", "shapes", ["clip_score"], num_samples=12, evaluator=tiny_evaluator, progress=False)
    with pytest.raises(MetricError, match="--clip-model .*not a folder"):
        evaluate("real", "shapes", ["clip_score"], num_samples=12, evaluator=tiny_evaluator, progress=False,
                 clip_model=str(tmp_path / "nope"))  # fmt: skip
    with pytest.raises(MetricError, match="--inception-weights .*no such file"):
        evaluate("real", "shapes", ["fid"], num_samples=12, evaluator=tiny_evaluator, progress=False,
                 inception_weights=str(tmp_path / "pt_inception.pth"))  # fmt: skip


def test_train_evaluator_on_a_dataset_without_attributes(tmp_path):
    """A folder dataset: only the matcher is trained, and its image encoder becomes the FID feature network."""
    import yaml
    from PIL import Image

    from t2i.metrics.train_evaluator import main as train_main

    ds = tmp_path / "ds"
    ds.mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    rows = []
    for i in range(36):
        name = list(colours)[i % 3]
        Image.new("RGB", (16, 16), colours[name]).save(ds / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": [f"a {name} square", f"all {name}"]})
    (ds / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    recipe = {"dataset": str(ds), "resolution": 16, "threads": 1, "val_images": 6, "calibration_images": 30,
              "architecture": {"channels": [8, 8], "feature_dim": 16, "embed_dim": 8},
              "matcher": {"num_images": 30, "epochs": 2, "batch_size": 10, "lr": 0.003},
              "matcher_finetune": {"epochs": 1, "batch_size": 15}}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert train_main([str(tmp_path / "r.yaml"), "--out", str(tmp_path / "ev")]) == 0
    ev = load_evaluator(tmp_path / "ev")
    assert ev.config.feature_network == "matcher" and ev.config.dataset == str(ds)
    assert ev.matcher.feature_std.ne(1).any()  # calibrated on the dataset's images
    log = [json.loads(x) for x in (tmp_path / "ev" / "train_log.jsonl").read_text().splitlines()]
    assert [r["net"] for r in log] == ["matcher", "matcher", "matcher_finetune"]
    assert set(ev.config.metrics) == {"matcher", "matcher_finetune"}
    r = evaluate("real", str(ds), ["fid"], num_samples=12, evaluator=tmp_path / "ev", progress=False)
    assert r["fid_feature"] == "matcher-16" and r["fid"] >= 0
    with pytest.raises(MetricError, match="ground-truth attributes"):
        evaluate("real", str(ds), ["attribute_accuracy"], num_samples=12, evaluator=tmp_path / "ev", progress=False)


def test_split_train_scores_the_training_scenes(tiny_evaluator, tmp_path):
    """--split train: the captions (and FID reference) come from the training split, images 0..N-1, i.e. what the
    Shapes recipes train on; the default stays the held-out test split, and another split is refused by name."""
    from t2i.data.shapes import ShapesConfig, make_sample
    from t2i.metrics.core import EvalContext

    seen = {}

    class Echo:  # records the captions it is asked for and returns blank images
        resolution = 16

        def __call__(self, captions, num_images_per_caption=1, seed=0, **kw):
            seen.setdefault("captions", []).extend(captions)
            return torch.zeros(len(captions) * num_images_per_caption, 3, 16, 16)

    r = evaluate(Echo(), "shapes", ["attribute_accuracy"], num_samples=6, evaluator=tiny_evaluator, progress=False,
                 split="train")  # fmt: skip
    assert r["split"] == "train"
    cfg = ShapesConfig(size=16)
    for i, cap in enumerate(seen["captions"]):
        assert cap in make_sample(cfg, "train", i).captions
    ctx = EvalContext("real", "shapes", 6, 0, tiny_evaluator, "cpu", False, {})
    assert ctx.captions[0] in make_sample(cfg, "test", 0).captions
    assert evaluate("real", "shapes", ["attribute_accuracy"], num_samples=6, evaluator=tiny_evaluator,
                    progress=False)["split"] == "test"  # fmt: skip
    with pytest.raises(MetricError, match="split must be 'train' or 'test'.*'val'"):
        evaluate("real", "shapes", ["attribute_accuracy"], num_samples=6, evaluator=tiny_evaluator, split="val")
    out = tmp_path / "t.json"
    assert main(["eval", "real", "--split", "train", "--num-samples", "6", "--metrics", "attribute_accuracy",
                 "--evaluator", str(tiny_evaluator), "--quiet", "--no-log", "--json", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["split"] == "train"
