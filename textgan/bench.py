"""`textgan bench`: seconds per training phase at the paper's oracle hyperparameters, wall and CPU time.

CPU (process) time is reported beside wall time because the project machine is shared: with 1 thread, process time
is what the same work takes on an idle core.

For the MLE and discriminator epochs the matmul/conv FLOPs of one training batch are counted with torch's
FlopCounterMode, so each phase also reports its achieved GFLOP/s and, against a measured dense-matmul rate with the
same threads (`matmul_gflops`), the floor a phase cannot go under without doing less arithmetic (`floor_s`).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from textgan.metrics import bleu, self_bleu
from textgan.models import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from textgan.seqgan import pg_loss, rollout_rewards


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return {"wall_s": round(time.perf_counter() - w, 3), "cpu_s": round(time.process_time() - c, 3)}


def train_flops(model_step, batch) -> int:
    """Matmul/conv FLOPs of one forward + backward of `model_step(batch)` (a scalar loss), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as m:
        model_step(batch).backward()
    return m.get_total_flops()


def matmul_gflops(n: int = 1024, seconds: float = 1.0) -> float:
    """Dense fp32 matmul rate of this CPU with the current torch thread count (a practical peak, not the datasheet)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def run_bench(threads: int = 1, mle_seqs: int = 10000, d_seqs: int = 20000, rollouts: int = 16, seed: int = 0):
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    V, T, B = 5000, 20, 64
    gen = Generator(GeneratorConfig(V, 32, 32, T))
    dis = Discriminator(DiscriminatorConfig(V))
    g_opt = torch.optim.Adam(gen.parameters(), 0.01)
    d_opt = torch.optim.Adam(dis.parameters(), 1e-4)
    data = torch.randint(0, V, (max(mle_seqs, d_seqs), T))
    res = {"threads": threads}

    def mle_epoch():
        for x in data[:mle_seqs].split(B):
            loss = gen.nll(x)
            g_opt.zero_grad()
            loss.backward()
            g_opt.step()

    def d_epoch():
        ys = torch.randint(0, 2, (d_seqs,))
        for x, y in zip(data[:d_seqs].split(B), ys.split(B)):
            loss = F.cross_entropy(dis(x), y) + dis.l2_penalty()
            d_opt.zero_grad()
            loss.backward()
            d_opt.step()

    def g_step():
        x = gen.sample(B)
        r = rollout_rewards(gen, dis, x, rollouts)
        loss = pg_loss(gen, x, r)
        g_opt.zero_grad()
        loss.backward()
        g_opt.step()

    def metrics():
        hyps = [[str(t) for t in s] for s in torch.randint(0, 3000, (10000, 12)).tolist()]
        refs = [[str(t) for t in s] for s in torch.randint(0, 3000, (10000, 12)).tolist()]
        bleu(hyps, refs)
        self_bleu(hyps)

    res["matmul_gflops"] = round(matmul_gflops(), 1)
    res["mle_epoch"] = _timed(mle_epoch) | {"seqs": mle_seqs}
    res["d_epoch"] = _timed(d_epoch) | {"seqs": d_seqs}
    d_step = lambda x: F.cross_entropy(dis(x), torch.zeros(len(x), dtype=torch.long))  # noqa: E731
    per_seq = {"mle_epoch": train_flops(gen.nll, data[:B]) / B, "d_epoch": train_flops(d_step, data[:B]) / B}
    for k, f in per_seq.items():
        flops = f * res[k]["seqs"]
        res[k] |= {"gflop": round(flops / 1e9, 1), "gflops_per_s": round(flops / 1e9 / res[k]["wall_s"], 1),
                   "floor_s": round(flops / 1e9 / res["matmul_gflops"], 2)}  # fmt: skip
    res["g_step"] = _timed(g_step) | {"batch": B, "rollouts": rollouts}
    res["bleu_selfbleu_10k"] = _timed(metrics)
    return res
