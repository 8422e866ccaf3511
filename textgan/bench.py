"""`textgan bench`: seconds per training phase at the paper's oracle hyperparameters, wall and CPU time.

CPU (process) time is reported beside wall time because the project machine is shared: with 1 thread, process time
is what the same work takes on an idle core.
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

    res["mle_epoch"] = _timed(mle_epoch) | {"seqs": mle_seqs}
    res["d_epoch"] = _timed(d_epoch) | {"seqs": d_seqs}
    res["g_step"] = _timed(g_step) | {"batch": B, "rollouts": rollouts}
    res["bleu_selfbleu_10k"] = _timed(metrics)
    return res
