"""benchmarks/train_throughput.py: the steady-state rate from a run's cumulative log, and a tiny end-to-end run."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import train_throughput  # noqa: E402


def test_steady_rate_leaves_out_the_warmup():
    # batch 10, cumulative times 5 s / 15 s / 17 s at steps 1 / 2 / 4 (a row without a rate is skipped).
    rows = [{"step": 1, "images_per_second": 10 / 5}, {"step": 2, "images_per_second": 20 / 15}, {"step": 3},
            {"step": 4, "images_per_second": 40 / 17}]  # fmt: skip
    assert train_throughput.steady_rate(rows, 10, warmup=2) == pytest.approx(20 / 2)  # steps 3-4 in 2 s
    assert train_throughput.steady_rate(rows, 10, warmup=1) == pytest.approx(30 / 12)  # the slow step 2 counts
    with pytest.raises(ValueError, match="after the warm-up"):
        train_throughput.steady_rate(rows, 10, warmup=4)


def test_tiny_run_writes_a_row(tmp_path):
    from tests.t2i.test_train import DATA, TINY  # the shrunken Shapes recipe of the training smoke tests

    out = tmp_path / "tp.json"
    tiny = [x for x in DATA if not x.startswith(("train.checkpoint_every", "train.sample_every", "train.num_threads"))]
    train_throughput.main([str(ROOT / "configs/t2i/shapes_stackgan.yaml"), "--steps", "3", "--warmup", "1",
                           "--set", *tiny, *TINY["stackgan"], "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["recipe"] == "shapes_stackgan" and rows[0]["images_per_second"] > 0
    assert rows[0]["precision"] == "no" and rows[0]["threads"] == 1 and rows[0]["batch_size"] == 4
    assert rows[0]["device"].endswith("(CPU, 1 threads)")
