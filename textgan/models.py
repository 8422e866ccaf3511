"""Generator (LSTM language model) and the SeqGAN CNN discriminator."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GeneratorConfig:
    """LSTM LM; 32/32 is the SeqGAN oracle setting."""

    vocab_size: int = 5000
    emb_dim: int = 32
    hidden_dim: int = 32
    seq_len: int = 20
    start_token: int = 0  # token fed at step 0 (oracle: 0, like SeqGAN; text: <bos>)
    eos_id: int | None = None  # None: fixed-length sequences (oracle); else ends a sentence, then <pad>
    pad_id: int | None = None
    banned: list[int] = field(default_factory=list)  # never sampled (<pad>, <bos> for text)


def sample_tokens(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """Inverse-CDF sampling: logits (N, V), uniforms u (N,) in [0, 1) -> tokens (N,).

    Taking the randomness as an explicit u makes batched and per-sample samplers comparable token for token.  The CDF
    is searched in two levels (blocks of 128 tokens, then inside the chosen block): a full (N, V) cumsum and
    torch.multinomial are each several times slower than this on CPU.
    """
    logits = logits / temperature if temperature != 1.0 else logits
    if top_k and top_k < logits.shape[1]:
        vals, idx = logits.topk(top_k, dim=1)  # (N, k)
        return idx.gather(1, sample_tokens(vals, u).unsqueeze(1)).squeeze(1)
    N, V = logits.shape
    blk = 128
    nb = (V + blk - 1) // blk
    p = (logits - logits.amax(1, keepdim=True)).exp_()  # unnormalised probabilities (N, V)
    if nb * blk != V:
        p = F.pad(p, (0, nb * blk - V))
    p = p.view(N, nb, blk)
    mass = p.sum(2)  # (N, nb)
    cdf = mass.cumsum(1)
    v = u * cdf[:, -1]  # (N,) target mass
    b = torch.searchsorted(cdf, v.unsqueeze(1), right=True).squeeze(1).clamp_(max=nb - 1)
    rows = torch.arange(N, device=logits.device)
    v = v - (cdf[rows, b] - mass[rows, b])  # mass left inside block b
    w = torch.searchsorted(p[rows, b].cumsum(1), v.unsqueeze(1), right=True).squeeze(1).clamp_(max=blk - 1)
    return (b * blk + w).clamp_(max=V - 1)


class Generator(nn.Module):
    """Embedding -> one-layer LSTM -> vocabulary logits, with a step function sharing the nn.LSTM weights."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.lstm = nn.LSTM(config.emb_dim, config.hidden_dim, batch_first=True)
        self.out = nn.Linear(config.hidden_dim, config.vocab_size)
        mask = torch.zeros(config.vocab_size)
        mask[config.banned] = float("-inf")
        self.register_buffer("logit_mask", mask, persistent=False)
        # SeqGAN initialises everything from N(0, 0.1); it trains faster than PyTorch's default on the oracle.
        for p in self.parameters():
            nn.init.normal_(p, std=0.1)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing inputs: start token then x[:, :-1].  (B, T) -> (B, T)"""
        start = torch.full_like(x[:, :1], self.config.start_token)
        return torch.cat([start, x[:, :-1]], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits for every position of targets x (B, T) -> (B, T, V)."""
        h, _ = self.lstm(self.emb(self.inputs(x)))  # (B, T, H)
        return self.logits(h.reshape(-1, h.shape[-1])).view(*h.shape[:2], -1)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N, V) with banned tokens at -inf: the mask rides on the bias, one fused addmm, no (N, V) add."""
        return F.linear(h, self.out.weight, self.out.bias + self.logit_mask)

    def token_mask(self, x: torch.Tensor) -> torch.Tensor:
        """1 for real tokens incl. <eos>, 0 for <pad>.  (B, T) float"""
        if self.config.pad_id is None:
            return torch.ones_like(x, dtype=torch.float)
        return (x != self.config.pad_id).float()

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_t | x_<t) for each position (B, T); <pad> positions are 0."""
        m = self.token_mask(x)
        safe = x if self.config.pad_id is None else x.masked_fill(m == 0, self.config.eos_id)  # <pad> logit is -inf
        lp = F.log_softmax(self(x), -1).gather(2, safe.unsqueeze(2)).squeeze(2)
        return lp * m

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Mean per-token NLL over non-pad tokens (scalar); fused cross-entropy is ~25% faster than log_probs."""
        ignore = -100 if self.config.pad_id is None else self.config.pad_id
        return F.cross_entropy(self(x).flatten(0, 1), x.flatten(), ignore_index=ignore)

    # --- step-wise API (sampling, rollouts) --------------------------------------------------------------------
    def step_state(self, tok: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """The LSTM recurrence with the nn.LSTM weights (gate order i, f, g, o): tokens (N,), state (N, H) -> h, c."""
        L = self.lstm
        z = F.linear(self.emb(tok), L.weight_ih_l0, L.bias_ih_l0) + F.linear(h, L.weight_hh_l0, L.bias_hh_l0)
        i, f, g, o = z.chunk(4, 1)  # each (N, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def sample_next(self, h: torch.Tensor, u: torch.Tensor, temperature=1.0, top_k=0, chunk=512) -> torch.Tensor:
        """Next tokens (N,) from hidden states (N, H); chunks of rows keep the (chunk, V) logits cache-sized."""
        out = torch.empty(h.shape[0], dtype=torch.long, device=h.device)
        for s in range(0, h.shape[0], chunk):
            logits = self.logits(h[s : s + chunk])
            out[s : s + chunk] = sample_tokens(logits, u[s : s + chunk], temperature, top_k)
        return out

    def prefix_states(self, x: torch.Tensor):
        """States after reading the start token and x[:, :t] for t = 0..T-1 -> h, c each (T, B, H)."""
        B, T, H = x.shape[0], x.shape[1], self.config.hidden_dim
        h = c = torch.zeros(B, H, device=x.device)
        hs, cs = [], []
        inp = self.inputs(x)
        for t in range(T):
            h, c = self.step_state(inp[:, t], h, c)
            hs.append(h)
            cs.append(c)
        return torch.stack(hs), torch.stack(cs)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, top_k: int = 0, generator: torch.Generator | None = None,
               seq_len: int | None = None, batch_size: int = 10000) -> torch.Tensor:  # fmt: skip
        """n sequences (n, T), batched over sequences; after <eos> every token is <pad>."""
        T = seq_len or self.config.seq_len
        dev = self.out.weight.device
        out = []
        for s in range(0, n, batch_size):
            m = min(batch_size, n - s)
            h = c = torch.zeros(m, self.config.hidden_dim, device=dev)
            tok = torch.full((m,), self.config.start_token, dtype=torch.long, device=dev)
            done = torch.zeros(m, dtype=torch.bool, device=dev)
            seq = torch.empty(m, T, dtype=torch.long, device=dev)
            for t in range(T):
                h, c = self.step_state(tok, h, c)
                u = torch.rand(m, generator=generator).to(dev)
                tok = self.sample_next(h, u, temperature, top_k)
                if self.config.eos_id is not None:
                    tok = tok.masked_fill(done, self.config.pad_id)
                    done |= tok == self.config.eos_id
                seq[:, t] = tok
            out.append(seq)
        return torch.cat(out)


PRECISIONS = ("fp32", "bf16")  # the discriminator's compute precisions (DiscriminatorConfig.precision)


@dataclass
class DiscriminatorConfig:
    """The SeqGAN CNN: filter sizes 1-10, 15, 20 with 100-200 filters, highway, dropout, L2 on the output layer."""

    vocab_size: int = 5000
    emb_dim: int = 64
    filter_sizes: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20])
    num_filters: list[int] = field(
        default_factory=lambda: [100, 200, 200, 200, 200, 100, 100, 100, 100, 100, 160, 160]
    )
    dropout: float = 0.25  # SeqGAN's keep_prob 0.75
    l2_reg: float = 0.2
    # "bf16": forward (and so backward) under bfloat16 autocast, fp32 weights and logits. The discriminator is dense
    # matmuls; on a CPU with AVX512-BF16 or AMX they run ~4x faster in bf16 (docs/RESULTS.md, #6 speed). Elsewhere
    # keep "fp32": without hardware bf16 the casts make it slower.
    precision: str = "fp32"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"discriminator precision must be 'fp32' or 'bf16', got {self.precision!r}")


class Discriminator(nn.Module):
    """CNN text classifier: real (class 1) vs generated (class 0)."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.convs = nn.ModuleList(
            nn.Conv1d(config.emb_dim, n, k) for k, n in zip(config.filter_sizes, config.num_filters)
        )
        d = sum(config.num_filters)
        self.highway = nn.Linear(d, 2 * d)  # transform gate and candidate in one matmul
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T) token ids -> (N, 2) fp32 logits."""
        bf16 = self.config.precision == "bf16"
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return self._logits(x, bf16).float()

    def _logits(self, x: torch.Tensor, bf16: bool) -> torch.Tensor:
        e = self.emb(x)  # (N, T, E)
        if bf16 and not e.requires_grad:
            # Inference (rewards): unfold the windows in bf16, half the bytes to copy (g-step 5.0 -> 3.0 s). When
            # training, unfold in fp32 and let the matmul cast: unfold's backward is ~4x slower in bf16 here.
            e = e.to(torch.bfloat16)
        if e.shape[1] < max(self.config.filter_sizes):
            e = F.pad(e, (0, 0, 0, max(self.config.filter_sizes) - e.shape[1]))
        N, E = e.shape[0], e.shape[2]
        feats = []
        for conv in self.convs:
            # Convolution as one matmul over unfolded windows: 2x faster than Conv1d on this CPU.
            k = conv.kernel_size[0]
            win = e.unfold(1, k, 1).reshape(N, -1, E * k)  # (N, T-k+1, E*k), window layout (E, k) like the weight
            w = conv.weight.view(conv.out_channels, E * k)
            if bf16:  # F.linear casts the bias too; `+ conv.bias` would promote the output to fp32
                out = F.linear(win, w, conv.bias)
            else:
                out = win @ w.T + conv.bias  # (N, T-k+1, nf)
            feats.append(F.relu(out).amax(1))  # max over time (N, nf)
        feats = torch.cat(feats, 1)  # (N, sum filters)
        gate, cand = self.highway(feats).chunk(2, 1)
        gate = torch.sigmoid(gate)
        feats = gate * F.relu(cand) + (1 - gate) * feats
        return self.out(self.dropout(feats))

    def l2_penalty(self) -> torch.Tensor:
        return self.config.l2_reg * 0.5 * (self.out.weight.square().sum() + self.out.bias.square().sum())

    @torch.no_grad()
    def real_prob(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """P(real) for (N, T) -> (N,); the caller is responsible for eval mode."""
        return torch.cat([F.softmax(self(xx), 1)[:, 1] for xx in x.split(chunk)])
