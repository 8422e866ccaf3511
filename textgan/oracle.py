"""The SeqGAN synthetic-data oracle: a fixed random LSTM ("target LSTM") that defines the true distribution.

Equations (shared/data/README.md), x = embedding of the previous token (start token 0 at step 0), h = c = 0:

    i = sigmoid(x W_i + h U_i + b_i)      f = sigmoid(x W_f + h U_f + b_f)
    o = sigmoid(x W_o + h U_o + b_o)      g = tanh(x W_c + h U_c + b_c)
    c = f * c + i * g                     h = o * tanh(c)
    logits = h W_out + b_out              next token ~ softmax(logits)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from textgan.data import shared_data_dir
from textgan.models import sample_tokens


@dataclass
class OracleConfig:
    """Shape of the SeqGAN oracle (fixed by the published npz)."""

    vocab_size: int = 5000
    emb_dim: int = 32
    hidden_dim: int = 32
    seq_len: int = 20
    start_token: int = 0


ORACLE_KEYS = ("embedding", "W_i", "U_i", "b_i", "W_f", "U_f", "b_f", "W_o", "U_o", "b_o", "W_c", "U_c", "b_c")


def oracle_path() -> Path:
    return shared_data_dir() / "seqgan_oracle" / "oracle_lstm.npz"


class Oracle(nn.Module):
    """The target LSTM, written out gate by gate exactly as in the README (no cuDNN/nn.LSTM reordering)."""

    def __init__(self, params: dict[str, np.ndarray], config: OracleConfig | None = None):
        super().__init__()
        self.config = config or OracleConfig()
        for k in (*ORACLE_KEYS, "W_out", "b_out"):
            self.register_buffer(k, torch.as_tensor(np.asarray(params[k], dtype=np.float32)))
        # Fused gate matrices for speed: x @ Wx + h @ Uh + b, gate order i, f, o, g.  (D, 4H), (H, 4H), (4H,)
        self.register_buffer("Wx", torch.cat([self.W_i, self.W_f, self.W_o, self.W_c], 1))
        self.register_buffer("Uh", torch.cat([self.U_i, self.U_f, self.U_o, self.U_c], 1))
        self.register_buffer("bg", torch.cat([self.b_i, self.b_f, self.b_o, self.b_c], 0))

    @classmethod
    def load(cls, path: str | Path | None = None) -> Oracle:
        path = Path(path) if path else oracle_path()
        if not path.exists():
            raise FileNotFoundError(
                f"oracle weights not found at {path} (set MMGAN_SHARED_DATA to the shared data dir)"
            )
        with np.load(path) as z:
            return cls({k: z[k] for k in z.files})

    def step(self, tok: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """One oracle step: previous token (N,), state (N, H) -> logits (N, V), new (h, c)."""
        h, c = self.recur(tok, h, c)
        return self.logits(h), h, c

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.W_out + self.b_out  # (N, V)

    def recur(self, tok: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """The recurrence: previous token (N,), state (N, H) -> new (h, c)."""
        x = self.embedding[tok]  # (N, D)
        H = h.shape[1]
        z = x @ self.Wx + h @ self.Uh + self.bg  # (N, 4H)
        i = torch.sigmoid(z[:, :H])
        f = torch.sigmoid(z[:, H : 2 * H])
        o = torch.sigmoid(z[:, 2 * H : 3 * H])
        g = torch.tanh(z[:, 3 * H :])
        c = f * c + i * g
        h = o * torch.tanh(c)
        return h, c

    def _init(self, n: int):
        H = self.config.hidden_dim
        z = torch.zeros(n, H, device=self.W_out.device)
        tok = torch.full((n,), self.config.start_token, dtype=torch.long, device=self.W_out.device)
        return tok, z, z.clone()

    @torch.no_grad()
    def sample(self, n: int, seq_len: int | None = None, generator: torch.Generator | None = None, batch_size=10000):
        """Draw n sequences (n, T) from the oracle, batched over sequences, one loop over the T steps."""
        T = seq_len or self.config.seq_len
        out = []
        for s in range(0, n, batch_size):
            m = min(batch_size, n - s)
            tok, h, c = self._init(m)
            seq = torch.empty(m, T, dtype=torch.long)
            for t in range(T):
                h, c = self.recur(tok, h, c)
                u = torch.rand(m, generator=generator)
                tok = torch.cat([sample_tokens(self.logits(hh), uu) for hh, uu in zip(h.split(512), u.split(512))])
                seq[:, t] = tok
            out.append(seq)
        return torch.cat(out)

    @torch.no_grad()
    def nll(self, seqs: torch.Tensor, batch_size: int = 10000) -> torch.Tensor:
        """Per-sequence mean per-token NLL (nats) of (N, T) sequences under the oracle -> (N,)."""
        out = []
        for s in range(0, len(seqs), batch_size):
            x = seqs[s : s + batch_size]
            tok, h, c = self._init(len(x))
            tot = torch.zeros(len(x))
            for t in range(x.shape[1]):
                h, c = self.recur(tok, h, c)
                # log p(x_t) chunk by chunk: (512, V) logits stay cache-sized
                tot -= torch.cat(
                    [
                        F.log_softmax(self.logits(hh), -1).gather(1, xx.unsqueeze(1)).squeeze(1)
                        for hh, xx in zip(h.split(512), x[:, t].split(512))
                    ]
                )
                tok = x[:, t]
            out.append(tot / x.shape[1])
        return torch.cat(out)


def oracle_datasets(oracle: Oracle, n_train=10000, n_valid=10000, n_test=10000, seed=88):
    """Deterministic oracle data: train / valid (for tuning MLE) / test (NLL-test), from one seeded torch.Generator.

    Seed 88 is SeqGAN's; the three splits are consecutive draws from the same generator, so they are disjoint samples.
    """
    g = torch.Generator().manual_seed(seed)
    return oracle.sample(n_train, generator=g), oracle.sample(n_valid, generator=g), oracle.sample(n_test, generator=g)
