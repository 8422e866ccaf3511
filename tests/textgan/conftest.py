import random

import pytest
import torch

from textgan.data import shared_data_dir

WORDS = "a man woman dog cat sits on the red blue bench table with two of an old street near".split()


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture
def oracle_npz():
    p = shared_data_dir() / "seqgan_oracle" / "oracle_lstm.npz"
    if not p.exists():
        pytest.skip("shared oracle data not available")
    return p


@pytest.fixture
def corpus(tmp_path):
    """A tiny caption corpus: train.txt / test.txt with variable-length sentences."""
    rng = random.Random(0)

    def lines(n):
        return "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + "." for _ in range(n))

    (tmp_path / "train.txt").write_text(lines(120) + "\n")
    (tmp_path / "test.txt").write_text(lines(40) + "\n")
    return tmp_path
