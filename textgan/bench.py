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


def matmul_gflops(n: int = 1024, seconds: float = 1.0, dtype: torch.dtype = torch.float32) -> float:
    """Dense matmul rate of this CPU with the current torch thread count (a practical peak, not the datasheet)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


# The SeqGAN paper's oracle schedule (sequence_gan.py), counted in the phases timed here.
PAPER_SCHEDULE = {"mle_epochs": 120, "d_pretrain_epochs": 50 * 3, "adv_steps": 200, "d_epochs_per_adv_step": 5 * 3}
# TextGAN-PyTorch on the project's 2-core CPU, as quoted by issue #6 (seconds per phase).
QUOTED_TEXTGAN_PYTORCH = {"mle_epoch": 4.4, "d_epoch": 19.0, "g_step": 29.0}


def schedule_seconds(mle_epoch: float, d_epoch: float, g_step: float, sched: dict = PAPER_SCHEDULE) -> float:
    """Seconds of the whole schedule from per-phase seconds (D epoch = 20k sequences; sampling negatives is not
    counted: 10k samples take ~0.1 s)."""
    d_total = sched["d_pretrain_epochs"] + sched["adv_steps"] * sched["d_epochs_per_adv_step"]
    return sched["mle_epochs"] * mle_epoch + d_total * d_epoch + sched["adv_steps"] * g_step


def run_bench(threads: int = 1, mle_seqs: int = 10000, d_seqs: int = 20000, rollouts: int = 16, seed: int = 0,
              d_precision: str = "fp32", fused_adam: bool = False):  # fmt: skip
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    V, T, B = 5000, 20, 64
    gen = Generator(GeneratorConfig(V, 32, 32, T))
    dis = Discriminator(DiscriminatorConfig(V, precision=d_precision))
    g_opt = torch.optim.Adam(gen.parameters(), 0.01, fused=fused_adam or None)
    d_opt = torch.optim.Adam(dis.parameters(), 1e-4, fused=fused_adam or None)
    data = torch.randint(0, V, (max(mle_seqs, d_seqs), T))
    res = {"threads": threads, "d_precision": d_precision, "fused_adam": fused_adam}

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
    d_rate = res["matmul_gflops"]
    if d_precision == "bf16":  # the discriminator's floor is the bf16 matmul rate
        d_rate = res["matmul_gflops_bf16"] = round(matmul_gflops(dtype=torch.bfloat16), 1)
    res["mle_epoch"] = _timed(mle_epoch) | {"seqs": mle_seqs}
    res["d_epoch"] = _timed(d_epoch) | {"seqs": d_seqs}
    d_step = lambda x: F.cross_entropy(dis(x), torch.zeros(len(x), dtype=torch.long))  # noqa: E731
    per_seq = {"mle_epoch": train_flops(gen.nll, data[:B]) / B, "d_epoch": train_flops(d_step, data[:B]) / B}
    for k, f in per_seq.items():
        flops, rate = f * res[k]["seqs"], d_rate if k == "d_epoch" else res["matmul_gflops"]
        res[k] |= {"gflop": round(flops / 1e9, 1), "gflops_per_s": round(flops / 1e9 / res[k]["wall_s"], 1),
                   "floor_s": round(flops / 1e9 / rate, 2)}  # fmt: skip
    res["g_step"] = _timed(g_step) | {"batch": B, "rollouts": rollouts}
    res["bleu_selfbleu_10k"] = _timed(metrics)
    d20k = res["d_epoch"]["wall_s"] * 20000 / d_seqs
    ours = schedule_seconds(res["mle_epoch"]["wall_s"] * 10000 / mle_seqs, d20k, res["g_step"]["wall_s"])
    quoted = schedule_seconds(**QUOTED_TEXTGAN_PYTORCH)
    res["paper_schedule"] = {"hours": round(ours / 3600, 2), "quoted_textgan_pytorch_hours": round(quoted / 3600, 2),
                             "speedup_vs_quoted": round(quoted / ours, 2)}  # fmt: skip
    return res
