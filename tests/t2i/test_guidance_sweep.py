"""benchmarks/guidance_sweep.py: the scale is picked on validation scenes and written as the checkpoint's default."""

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import guidance_sweep  # noqa: E402


@pytest.mark.parametrize("bundle", ["diffusion", "vqgan"])
def test_sweep_writes_rows_and_the_best_scale_as_default(tmp_path, bundle, monkeypatch):
    src = ROOT / "checkpoints/shapes64" / bundle
    if not src.exists():
        pytest.skip("bundled checkpoint not present")
    ck = tmp_path / bundle
    shutil.copytree(src, ck)
    seen = []

    def fake_evaluate(gen, dataset, metrics, num_samples, progress, dataset_seed):
        seen.append((gen.scale, dataset_seed, tuple(metrics)))
        return {"attribute_accuracy": {1.0: 0.2, 4.0: 0.5, 7.0: 0.4}[gen.scale], "r_precision": 0.3}

    import t2i.metrics

    monkeypatch.setattr(t2i.metrics, "evaluate", fake_evaluate)
    out = tmp_path / "sweep"
    args = [str(ck), "--scales", "1", "4", "7", "--num-samples", "3", "--out", str(out), "--set-default"]
    assert guidance_sweep.main(args) == 0
    assert [s for s, _, _ in seen] == [1.0, 4.0, 7.0] and {d for _, d, _ in seen} == {1}  # validation scenes
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["best_scale"] == 4.0 and len(info["rows"]) == 3 and out.with_suffix(".png").stat().st_size > 0
    from t2i.pipelines import load_pipeline

    pipe = load_pipeline(ck)
    default = pipe.config.default_guidance if bundle == "diffusion" else pipe.sampling["guidance_scale"]
    assert default == 4.0


def test_guided_wrapper_really_changes_the_guidance():
    """The wrapper the sweep scores hands its scale to the pipeline (else every row would be the same model)."""
    calls = []

    class Pipe:
        family, resolution = "vqgan", 64

        def __call__(self, captions, k, seed, batch_size, guidance_scale=None):
            calls.append(guidance_scale)
            return guidance_scale

    g = guidance_sweep._Guided(Pipe(), 5.0)
    assert g(["a red circle"]) == 5.0 and calls == [5.0] and (g.family, g.resolution) == ("vqgan", 64)


def test_text_order_pairs_flip_and_mirror_the_relation():
    """benchmarks/text_order.py compares a caption with its relation flipped (another picture) and its mirror (the
    same picture): the mirror swaps the objects and inverts the relation, the flip only inverts it."""
    from benchmarks.text_order import pairs

    rows = pairs(20)
    inverse = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    for cap, flipped, mirrored in rows:
        rel = next(r for r in inverse if f" {r} " in cap)
        a, b = cap.split(f" {rel} ")
        assert flipped == f"{a} {inverse[rel]} {b}" and mirrored == f"{b} {inverse[rel]} {a}"
    assert len(rows) == 20 and len({r[0] for r in rows}) > 10
