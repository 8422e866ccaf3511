"""SeqGAN training (Yu et al. 2017) and the MLE baseline: recipes, batched rollouts, the training loop."""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from tqdm import tqdm

from textgan.checkpoint import (
    atomic_save_tensors,
    atomic_write_json,
    existing_dir,
    export_generator,
    load_generator,
    load_optimizer,
    optimizer_tensors,
    save_dir_atomically,
)
from textgan.data import BOS, EOS, PAD, TOKENIZERS, encode_lines, load_tokenizer, read_corpus, words
from textgan.models import PRECISIONS, Discriminator, DiscriminatorConfig, Generator, GeneratorConfig


@dataclass
class TrainConfig:
    """Everything a run needs; the defaults are the SeqGAN paper's oracle schedule."""

    name: str = "oracle_seqgan_paper"
    task: str = "oracle"  # oracle | text
    mode: str = "seqgan"  # seqgan | mle (the baseline: MLE only, best generator by validation NLL)
    seed: int = 88
    threads: int = 1
    # data: oracle samples (seeded), or one-sentence-per-line files ("shared:" = the shared data dir)
    n_train: int = 10000
    n_valid: int = 10000
    n_test: int = 10000
    train_file: str = "shared:image_coco/train.txt"
    test_file: str = "shared:image_coco/test.txt"
    valid_fraction: float = 0.05  # text: held out from the training file for model selection
    tokenizer: str = "word"  # word | sentencepiece
    vocab_size: int = 0  # 0 = every word with min_count (word); sentencepiece needs a size
    min_count: int = 1
    max_words: int = 60  # longer lines are an error
    seq_len: int = 20  # oracle length; text: max tokens incl. <eos>
    # models
    emb_dim: int = 32
    hidden_dim: int = 32
    dis_emb_dim: int = 64
    dis_filter_sizes: list[int] = field(default_factory=lambda: DiscriminatorConfig().filter_sizes)
    dis_num_filters: list[int] = field(default_factory=lambda: DiscriminatorConfig().num_filters)
    dis_dropout: float = 0.25
    dis_l2: float = 0.2
    # "bf16": the discriminator under bfloat16 autocast (fp32 weights); ~2.3x faster discriminator epochs and
    # rewards on a CPU with AVX512-BF16/AMX, slower on one without. Models and checkpoints are the same either way.
    d_precision: str = "fp32"
    # optimisation
    batch_size: int = 64
    g_lr: float = 0.01
    adv_g_lr: float = 0.01
    d_lr: float = 1e-4
    grad_clip: float = 5.0
    fused_adam: bool = False  # torch's fused Adam kernel: the same update in one pass (1.15x D epochs on CPU)
    # schedule
    mle_epochs: int = 120
    d_pretrain_rounds: int = 50
    d_pretrain_epochs: int = 3
    adv_steps: int = 200
    g_steps: int = 1
    d_steps: int = 5
    d_epochs: int = 3
    n_neg: int = 10000  # generated negatives per discriminator step (positives subsampled to match)
    rollout_num: int = 16
    rollout_update_rate: float = 0.8  # rollout <- rate * rollout + (1 - rate) * generator after each g-step
    reward_baseline: str = "none"  # none | mean (per position, over the batch)
    # mean: the policy-gradient loss averaged over tokens (the paper's equation). sum: summed over the batch's tokens,
    # as SeqGAN's code does; with grad_clip 5 the gradient is then clipped on every step (its norm is ~B*T times the
    # mean's), so each Adam step has the same size however small the rewards get once D wins.
    pg_reduction: str = "mean"
    # evaluation during training
    init_from: str = ""  # start the generator (and tokenizer) from this checkpoint, e.g. the MLE baseline's model
    eval_every: int = 5  # MLE epochs / adversarial steps
    eval_samples: int = 2000
    save_every: int = 10
    tensorboard: bool = True


RECIPES: dict[str, TrainConfig] = {}


def _recipe(**kw) -> TrainConfig:
    cfg = replace(TrainConfig(), **kw)
    RECIPES[cfg.name] = cfg
    return cfg


# The paper's schedule (SeqGAN's sequence_gan.py): ~15 h on a 2-core CPU with TextGAN-PyTorch.
_recipe(name="oracle_seqgan_paper")
# CPU recipe (~20 min on one idle core): the paper's 120 MLE epochs, 5 light discriminator rounds, then 20 adversarial
# steps with one light discriminator step each. 20, because that is where NLL-oracle bottomed out in a 60-step run
# (8.81 / 8.73 / 8.75 / 8.79 / 8.80 at steps 10-50, 2k samples): after it the discriminator wins (loss 0.34 -> 0.07,
# mean reward 0.24 -> 0.03) and the policy gradient only adds noise. With 20 MLE epochs it plateaued at 8.78.
_recipe(
    name="oracle_seqgan",
    mle_epochs=120,
    d_pretrain_rounds=5,
    d_pretrain_epochs=1,
    adv_steps=20,
    d_steps=1,
    d_epochs=1,
    n_neg=2500,
    eval_every=5,
    save_every=5,
)
# MLE baseline: same generator, model selection on a separate oracle validation set, epochs to match the budget.
_recipe(name="oracle_mle", mode="mle", mle_epochs=20, eval_every=5)
_coco = dict(
    task="text",
    seq_len=26,  # 25 word tokens + <eos>: covers all but a handful of the captions (the rest are truncated)
    emb_dim=64,
    hidden_dim=64,
    min_count=2,  # words seen once in train map to <unk>: ~3.4k-word vocabulary, a ~2 MB generator
    batch_size=64,
    eval_every=2,
    eval_samples=1000,
    seed=12,
)
_recipe(name="coco_mle", mode="mle", mle_epochs=24, **_coco)
# CPU recipe: 8 rollouts instead of 16 and short phases, sized for ~30 min on a shared 2-core CPU.
_recipe(
    name="coco_seqgan",
    mle_epochs=16,
    d_pretrain_rounds=3,
    d_pretrain_epochs=1,
    adv_steps=30,
    d_steps=1,
    d_epochs=1,
    n_neg=2500,
    rollout_num=8,
    **{**_coco, "eval_every": 5},
)


def load_config(spec: str, overrides: list[str] | None = None) -> TrainConfig:
    """A recipe name or a YAML file (optionally `recipe: NAME` as its base), then key=value overrides."""
    if spec in RECIPES:
        cfg, raw = RECIPES[spec], {}
    else:
        p = Path(spec)
        if not p.exists():
            raise ValueError(f"{spec!r} is neither a recipe ({', '.join(RECIPES)}) nor a config file")
        raw = yaml.safe_load(p.read_text()) or {}
        base = raw.pop("recipe", None)
        if base is not None and base not in RECIPES:
            raise ValueError(f"{spec}: unknown base recipe {base!r}")
        cfg = RECIPES[base] if base else TrainConfig()
    raw.update(parse_overrides(overrides))
    names = {f.name for f in fields(TrainConfig)}
    bad = set(raw) - names
    if bad:
        raise ValueError(f"unknown config keys: {sorted(bad)}")
    cfg = replace(cfg, **raw)
    if cfg.task not in ("oracle", "text") or cfg.mode not in ("seqgan", "mle"):
        raise ValueError(f"task must be oracle|text and mode seqgan|mle, got {cfg.task}/{cfg.mode}")
    if cfg.reward_baseline not in ("none", "mean") or cfg.pg_reduction not in ("mean", "sum"):
        raise ValueError(f"reward_baseline must be none|mean and pg_reduction mean|sum, got "
                         f"{cfg.reward_baseline!r}/{cfg.pg_reduction!r}")  # fmt: skip
    if cfg.d_precision not in PRECISIONS:
        raise ValueError(f"d_precision must be fp32|bf16, got {cfg.d_precision!r}")
    return cfg


def parse_overrides(overrides: list[str] | None) -> dict:
    """["key=value", ...] -> dict, values parsed as YAML scalars/lists; unknown keys are an error."""
    raw = {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        k, v = item.split("=", 1)
        raw[k] = yaml.safe_load(v)
    bad = set(raw) - {f.name for f in fields(TrainConfig)}
    if bad:
        raise ValueError(f"unknown config keys: {sorted(bad)}")
    return raw


# --- batched Monte-Carlo rollouts -----------------------------------------------------------------------------
@torch.no_grad()
def rollout_sequences(rollout: Generator, x: torch.Tensor, num: int, u: torch.Tensor | None = None, temperature=1.0):
    """Complete every prefix of x (B, T) `num` times -> (T-1, R, B, T); row [t-1, r, b] keeps x[b, :t].

    All (prefix length, rollout, sequence) rows run in one batch.  Rows are ordered by prefix length, so at loop step
    s the rows still generating (those with t <= T-1-s) are a leading slice: the loop does sum_t (T-t) R B row-steps.
    u (T-1, R, B, T) holds the uniforms that drive sampling (u[t-1, r, b, p] picks token p); random if None.
    """
    B, T = x.shape
    R = num
    if u is None:
        u = torch.rand(T - 1, R, B, T, device=x.device)
    hs, cs = rollout.prefix_states(x)  # (T, B, H): state ready to predict x[:, t]
    H = hs.shape[2]
    h = hs[1:].unsqueeze(1).expand(T - 1, R, B, H).reshape(-1, H)  # ((T-1) R B, H)
    c = cs[1:].unsqueeze(1).expand(T - 1, R, B, H).reshape(-1, H)
    seqs = x.expand(T - 1, R, B, T).clone().view(-1, T)  # ((T-1) R B, T), prefixes in place
    u = u.reshape(-1, T)
    t_of_row = torch.arange(1, T, device=x.device).repeat_interleave(R * B)  # prefix length of each row
    rows = torch.arange(len(seqs), device=x.device)
    eos = rollout.config.eos_id
    if eos is not None:
        # a prefix that already ended: the rest stays <pad> (it is already <pad> in x)
        ended = (x.cumsum(1) * 0 + (x == eos).long()).cummax(1).values.bool()  # (B, T): eos at or before p
        done = ended[:, :-1].T.unsqueeze(1).expand(T - 1, R, B).reshape(-1).clone()  # ended within x[:, :t]
    tok = None
    for s in range(T - 1):
        n = (T - 1 - s) * R * B  # rows with t + s <= T - 1 are still generating
        if s > 0:
            h, c = rollout.step_state(tok[:n], h[:n], c[:n])
        pos = t_of_row[:n] + s
        tok = rollout.sample_next(h, u[rows[:n], pos], temperature)
        if eos is not None:
            tok = tok.masked_fill(done[:n], rollout.config.pad_id)
            done = done[:n] | (tok == eos)
        seqs[rows[:n], pos] = tok
    return seqs.view(T - 1, R, B, T)


@torch.no_grad()
def rollout_rewards(rollout: Generator, dis: Discriminator, x: torch.Tensor, num: int, u=None) -> torch.Tensor:
    """Per-token rewards (B, T): mean D(real) over rollouts for t < T, D(x) itself at t = T.

    One discriminator call on all (T-1) R B + B sequences, in eval mode (no dropout) whatever mode it was in.
    """
    B, T = x.shape
    rolls = rollout_sequences(rollout, x, num, u)
    was_training = dis.training
    dis.eval()
    p = dis.real_prob(torch.cat([rolls.view(-1, T), x]))  # ((T-1) R B + B,)
    dis.train(was_training)
    r = p[:-B].view(T - 1, num, B).mean(1)  # (T-1, B)
    return torch.cat([r, p[-B:].unsqueeze(0)]).T.contiguous()  # (B, T)


def update_rollout(rollout: Generator, gen: Generator, rate: float) -> None:
    """Delayed copy: rollout <- rate * rollout + (1 - rate) * generator (rate 0 = the current generator)."""
    with torch.no_grad():
        for pr, pg in zip(rollout.parameters(), gen.parameters()):
            pr.mul_(rate).add_(pg, alpha=1 - rate)


def pg_loss(gen: Generator, x: torch.Tensor, rewards: torch.Tensor, baseline: str = "none",
            reduction: str = "mean") -> torch.Tensor:  # fmt: skip
    """REINFORCE: -mean (or sum) over real tokens of log G(x_t | x_<t) * (Q_t - b_t)."""
    m = gen.token_mask(x)
    if baseline == "mean":
        rewards = rewards - (rewards * m).sum(0) / m.sum(0).clamp(min=1)
    total = -(gen.log_probs(x) * rewards * m).sum()
    return total if reduction == "sum" else total / m.sum()


# --- data -----------------------------------------------------------------------------------------------------
class TaskData:
    """Tensors for one task: train / valid / test (N, T), plus the oracle or the tokenizer and test references."""

    def __init__(self, cfg: TrainConfig, tokenizer=None):
        self.oracle = self.tokenizer = None
        self.test_refs = None
        if cfg.task == "oracle":
            from textgan.oracle import Oracle, oracle_datasets

            self.oracle = Oracle.load()
            self.vocab_size = self.oracle.config.vocab_size
            self.train, self.valid, self.test = oracle_datasets(
                self.oracle, cfg.n_train, cfg.n_valid, cfg.n_test, seed=cfg.seed
            )
            return
        lines = read_corpus(cfg.train_file, cfg.max_words)
        test_lines = read_corpus(cfg.test_file, cfg.max_words)
        g = torch.Generator().manual_seed(cfg.seed)
        perm = torch.randperm(len(lines), generator=g).tolist()
        n_val = int(len(lines) * cfg.valid_fraction)
        valid_lines = [lines[i] for i in perm[:n_val]]
        train_lines = [lines[i] for i in perm[n_val:]][: cfg.n_train or None]
        if tokenizer is None:
            tokenizer = TOKENIZERS[cfg.tokenizer].train(
                train_lines, vocab_size=cfg.vocab_size, min_count=cfg.min_count
            )
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.train = encode_lines(tokenizer, train_lines, cfg.seq_len)
        self.valid = encode_lines(tokenizer, valid_lines or train_lines[:100], cfg.seq_len)
        self.test = encode_lines(tokenizer, test_lines[: cfg.n_test or None], cfg.seq_len)
        self.test_refs = [words(s) for s in test_lines[: cfg.n_test or None]]


def generator_config(cfg: TrainConfig, vocab_size: int) -> GeneratorConfig:
    if cfg.task == "oracle":
        return GeneratorConfig(vocab_size, cfg.emb_dim, cfg.hidden_dim, cfg.seq_len, start_token=0)
    return GeneratorConfig(
        vocab_size,
        cfg.emb_dim,
        cfg.hidden_dim,
        cfg.seq_len,
        start_token=BOS,
        eos_id=EOS,
        pad_id=PAD,
        banned=[PAD, BOS],
    )


def evaluate(gen: Generator, data: TaskData, cfg: TrainConfig, n: int, temperature: float = 1.0) -> dict:
    from textgan.metrics import generator_nll, oracle_metrics, text_metrics

    was = gen.training
    gen.eval()
    if data.oracle is not None:
        res = oracle_metrics(gen, data.oracle, data.test, n=n, temperature=temperature)
    else:
        res = text_metrics(gen, data.tokenizer, data.test, data.test_refs, n=n, temperature=temperature)
    res["nll_valid"] = generator_nll(gen, data.valid)
    gen.train(was)
    return res


# --- run folders ----------------------------------------------------------------------------------------------
def new_run_dir(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    nums = [int(p.name.rsplit("-", 1)[1]) for p in root.glob(f"{name}-*") if p.name.rsplit("-", 1)[1].isdigit()]
    d = root / f"{name}-{max(nums, default=0) + 1:03d}"
    d.mkdir()
    return d


def find_resume_dir(root: Path, name: str, resume: str) -> Path:
    if resume != "latest":
        return Path(resume)
    runs = sorted(
        (p for p in root.glob(f"{name}-*") if p.name.rsplit("-", 1)[1].isdigit()),
        key=lambda p: int(p.name.rsplit("-", 1)[1]),
    )
    if not runs:
        raise FileNotFoundError(f"--resume latest: no run named {name}-NNN under {root}")
    return runs[-1]


class Logger:
    """metrics.jsonl + timing.jsonl (+ TensorBoard) in the run folder."""

    def __init__(self, run: Path, tensorboard: bool):
        self.run = run
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run / "tb"))
            except Exception as e:  # tensorboard is optional at run time
                print(f"tensorboard disabled: {e}", file=sys.stderr)

    def metrics(self, row: dict) -> None:
        with open(self.run / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch", "global_step"):
                    self.tb.add_scalar(f"{row['phase']}/{k}", v, row["global_step"])
            self.tb.flush()

    def timing(self, phase: str, step: int, seconds: float, **extra) -> None:
        with open(self.run / "timing.jsonl", "a") as f:
            f.write(json.dumps({"phase": phase, "step": step, "seconds": round(seconds, 4), **extra}) + "\n")


def _bar(total: int, desc: str, initial: int = 0):
    return tqdm(total=total, initial=initial, desc=desc, mininterval=1 if sys.stderr.isatty() else 30, file=sys.stderr)


def plot_curves(run: Path) -> None:
    """training-curves.png from metrics.jsonl (NLL-oracle / BLEU and NLL-test per global step, phases marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = run / "metrics.jsonl"
    if not p.exists():
        return
    rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("phase") in ("mle", "adv")]
    if not rows:
        return
    keys = ["nll_oracle", "nll_test"] if "nll_oracle" in rows[0] else ["bleu3", "self_bleu3", "nll_test"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5))
    for ax, k in zip(axes, keys):
        for ph, mk in (("mle", "o-"), ("adv", "s-")):
            rr = [r for r in rows if r["phase"] == ph and k in r]
            if rr:
                ax.plot([r["global_step"] for r in rr], [r[k] for r in rr], mk, ms=3, label=ph)
        ax.set_title(k)
        ax.set_xlabel("MLE epochs + adversarial steps")
        ax.legend()
    fig.tight_layout()
    fig.savefig(run / "training-curves.png", dpi=100)
    plt.close(fig)


# --- the training loop ----------------------------------------------------------------------------------------
PHASES = ["mle", "dpre", "adv", "done"]


def train(
    cfg: TrainConfig,
    runs_root: str | Path = "runs",
    resume: str | None = None,
    command: str = "",
    resume_overrides: dict | None = None,
) -> Path:
    """Run (or resume) one recipe; returns the run folder.  Phases: mle -> dpre -> adv (SeqGAN) or mle only."""
    torch.set_num_threads(cfg.threads)
    runs_root = Path(runs_root)

    # Set up the run folder.
    if resume:
        # Resume: the run's own config, plus any overrides given now (e.g. a shorter schedule), recorded in the run.
        run = find_resume_dir(runs_root, cfg.name, resume)
        saved = yaml.safe_load((run / "config.yaml").read_text())
        cfg = replace(TrainConfig(), **{**saved, **(resume_overrides or {})})
        torch.set_num_threads(cfg.threads)
        if resume_overrides:
            (run / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
        with open(run / "command.txt", "a") as f:
            f.write(command + "\n")
    else:
        run = new_run_dir(runs_root, cfg.name)
        (run / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
        (run / "command.txt").write_text(command + "\n")
    torch.manual_seed(cfg.seed)
    log = Logger(run, cfg.tensorboard)
    t_setup = time.time()

    # Load data and build the models.
    ckdir = existing_dir(run / "checkpoint")
    init = None
    if cfg.init_from and not (resume and ckdir):
        init = load_generator(cfg.init_from, expect_task=cfg.task)  # (generator, config, tokenizer)
    tokenizer = load_tokenizer(ckdir) if (resume and ckdir and cfg.task == "text") else (init[2] if init else None)
    data = TaskData(cfg, tokenizer=tokenizer)
    gcfg = generator_config(cfg, data.vocab_size)
    gen = Generator(gcfg)
    if init is not None:
        if init[1]["generator"] != asdict(gcfg):
            raise ValueError(
                f"init_from {cfg.init_from}: generator {init[1]['generator']} != this recipe's {asdict(gcfg)}"
            )
        gen.load_state_dict(init[0].state_dict())
    dis = Discriminator(
        DiscriminatorConfig(
            data.vocab_size,
            cfg.dis_emb_dim,
            cfg.dis_filter_sizes,
            cfg.dis_num_filters,
            cfg.dis_dropout,
            cfg.dis_l2,
            precision=cfg.d_precision,
        )
    )
    rollout = copy.deepcopy(gen)
    fused = cfg.fused_adam or None  # None, not False: torch keeps its per-device default
    g_opt = torch.optim.Adam(gen.parameters(), lr=cfg.g_lr, fused=fused)
    adv_opt = torch.optim.Adam(gen.parameters(), lr=cfg.adv_g_lr, fused=fused)
    d_opt = torch.optim.Adam(dis.parameters(), lr=cfg.d_lr, fused=fused)
    state = {"phase": "mle", "step": 0, "best_valid": math.inf, "elapsed": 0.0}

    def save(phase: str, step: int) -> None:
        state.update(phase=phase, step=step)

        def write(d: Path):
            tensors = {f"gen.{k}": v for k, v in gen.state_dict().items()}
            tensors.update({f"dis.{k}": v for k, v in dis.state_dict().items()})
            tensors.update({f"rollout.{k}": v for k, v in rollout.state_dict().items()})
            meta = {}
            for nm, opt in (("g_opt", g_opt), ("adv_opt", adv_opt), ("d_opt", d_opt)):
                t, m = optimizer_tensors(opt, nm)
                tensors.update(t)
                meta[nm] = m
            tensors["rng"] = torch.get_rng_state()
            atomic_save_tensors(tensors, d / "state.safetensors")
            atomic_write_json({"state": state, "optim": meta}, d / "state.json")
            if data.tokenizer is not None:
                data.tokenizer.save(d)

        save_dir_atomically(run / "checkpoint", write)

    if resume and ckdir is not None:
        st = json.loads((ckdir / "state.json").read_text())
        tensors = load_file(str(ckdir / "state.safetensors"))
        for prefix, mod in (("gen.", gen), ("dis.", dis), ("rollout.", rollout)):
            mod.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        for nm, opt in (("g_opt", g_opt), ("adv_opt", adv_opt), ("d_opt", d_opt)):
            load_optimizer(opt, tensors, nm, st["optim"][nm])
        torch.set_rng_state(tensors["rng"])
        state.update(st["state"])
        print(f"resumed {run} at phase {state['phase']} step {state['step']}", file=sys.stderr)
    log.timing("setup", 0, time.time() - t_setup)
    extra = {"recipe": cfg.name, "mode": cfg.mode, "run": str(run)}

    def export(g: Generator, sub: str = "model") -> None:
        export_generator(
            g, run / sub, cfg.task, data.tokenizer, {**extra, "train_command": command, "config": asdict(cfg)}
        )

    def record(phase: str, step: int, global_step: int, seconds: float, **kw) -> dict:
        res = evaluate(gen, data, cfg, cfg.eval_samples)
        row = {"phase": phase, "step": step, "global_step": global_step, "elapsed_s": round(state["elapsed"], 1)}
        row.update(res, **kw)
        log.metrics(row)
        return row

    start_phase = PHASES.index(state["phase"])
    tic = time.time()

    def elapsed():
        return state["elapsed"] + time.time() - tic

    # Phase 1: MLE (pretraining for SeqGAN; the whole budget for the baseline).
    if start_phase <= 0:
        bar = _bar(cfg.mle_epochs, f"{cfg.name} MLE epochs", state["step"] if start_phase == 0 else 0)
        first = state["step"] if start_phase == 0 else 0
        for epoch in range(first, cfg.mle_epochs):
            t0 = time.time()
            gen.train()
            perm = torch.randperm(len(data.train))
            tot = 0.0
            for i in range(0, len(perm), cfg.batch_size):
                # Fetch training data.
                x = data.train[perm[i : i + cfg.batch_size]]  # (B, T)
                # Maximum-likelihood step.
                loss = gen.nll(x)
                g_opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(gen.parameters(), cfg.grad_clip)
                g_opt.step()
                tot += float(loss.detach()) * len(x)
            log.timing("mle_epoch", epoch + 1, time.time() - t0)
            bar.update(1)
            # Evaluate and keep the best generator by validation NLL (model selection for the baseline).
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.mle_epochs:
                row = record("mle", epoch + 1, epoch + 1, 0, train_nll=tot / len(data.train))
                state["elapsed"] = elapsed()
                tic = time.time()
                bar.set_postfix({k: round(row[k], 3) for k in ("nll_oracle", "nll_test", "bleu3") if k in row})
                if row["nll_valid"] < state["best_valid"]:
                    state["best_valid"] = row["nll_valid"]
                    export(gen, "model_best_valid")
            if (epoch + 1) % cfg.save_every == 0 or epoch + 1 == cfg.mle_epochs:
                state["elapsed"] = elapsed()
                tic = time.time()
                save("mle", epoch + 1)
        bar.close()
        rollout.load_state_dict(gen.state_dict())
        save("dpre", 0)
        if cfg.mode == "mle":
            # The baseline ships its validation-selected generator.
            best = existing_dir(run / "model_best_valid")
            g_best, _, _ = load_generator(best)
            gen.load_state_dict(g_best.state_dict())
        else:
            export(gen, "model_mle")

    def train_discriminator(epochs: int, phase: str, step: int) -> float:
        """Fresh negatives from the generator vs an equal number of real sequences, `epochs` passes."""
        t0 = time.time()
        neg = gen.sample(cfg.n_neg)  # (n_neg, T)
        pos = data.train[torch.randperm(len(data.train))[: cfg.n_neg]]
        xs = torch.cat([pos, neg])
        ys = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).long()
        t_sample = time.time() - t0
        dis.train()
        tot = 0.0
        for _ in range(epochs):
            t1 = time.time()
            perm = torch.randperm(len(xs))
            for i in range(0, len(xs), cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                loss = F.cross_entropy(dis(xs[idx]), ys[idx]) + dis.l2_penalty()
                d_opt.zero_grad(set_to_none=True)
                loss.backward()
                d_opt.step()
                tot += float(loss.detach()) * len(idx)
            log.timing("d_epoch", step, time.time() - t1, stage=phase, n=len(xs))
        log.timing("d_negatives", step, t_sample, stage=phase, n=cfg.n_neg)
        return tot / (epochs * len(xs))

    # Phase 2: discriminator pretraining.
    if cfg.mode == "seqgan" and start_phase <= 1:
        first = state["step"] if start_phase == 1 else 0
        bar = _bar(cfg.d_pretrain_rounds, f"{cfg.name} D pretraining", first)
        for rnd in range(first, cfg.d_pretrain_rounds):
            d_loss = train_discriminator(cfg.d_pretrain_epochs, "dpre", rnd + 1)
            log.metrics({"phase": "dpre", "step": rnd + 1, "global_step": cfg.mle_epochs, "d_loss": d_loss})
            bar.update(1)
            bar.set_postfix(d_loss=round(d_loss, 4))
            if (rnd + 1) % cfg.save_every == 0:
                state["elapsed"] = elapsed()
                tic = time.time()
                save("dpre", rnd + 1)
        bar.close()
        state["elapsed"] = elapsed()
        tic = time.time()
        save("adv", 0)

    # Phase 3: adversarial training.
    if cfg.mode == "seqgan" and start_phase <= 2:
        first = state["step"] if start_phase == 2 else 0
        bar = _bar(cfg.adv_steps, f"{cfg.name} adversarial", first)
        for step in range(first, cfg.adv_steps):
            gen.train()
            for _ in range(cfg.g_steps):
                # Sample a batch and score every prefix with Monte-Carlo rollouts (one batched D call).
                t0 = time.time()
                x = gen.sample(cfg.batch_size)  # (B, T)
                rewards = rollout_rewards(rollout, dis, x, cfg.rollout_num)  # (B, T)
                t_roll = time.time() - t0
                # Policy-gradient step.
                loss = pg_loss(gen, x, rewards, cfg.reward_baseline, cfg.pg_reduction)
                adv_opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(gen.parameters(), cfg.grad_clip)
                adv_opt.step()
                log.timing("g_step", step + 1, time.time() - t0, rollouts=t_roll)
            # Update the delayed rollout network.
            update_rollout(rollout, gen, cfg.rollout_update_rate)
            # Train the discriminator on fresh negatives.
            d_loss = 0.0
            for _ in range(cfg.d_steps):
                d_loss = train_discriminator(cfg.d_epochs, "adv", step + 1)
            bar.update(1)
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.adv_steps:
                row = record(
                    "adv", step + 1, cfg.mle_epochs + step + 1, 0, d_loss=d_loss, reward=float(rewards.mean())
                )
                bar.set_postfix({k: round(row[k], 3) for k in ("nll_oracle", "nll_test", "bleu3") if k in row})
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.adv_steps:
                state["elapsed"] = elapsed()
                tic = time.time()
                save("adv", step + 1)
                export(gen)  # the latest generator is usable by `textgan eval` while training goes on
        bar.close()

    # Save the final network snapshot, the curves and the timing summary.
    state["elapsed"] = elapsed()
    export(gen)
    save("done", 0)
    plot_curves(run)
    summarize_timing(run)
    if log.tb:
        log.tb.close()
    return run


def summarize_timing(run: Path) -> dict:
    """Mean seconds per phase unit (MLE epoch, D epoch, g-step) and totals -> timing_summary.json."""
    p = run / "timing.jsonl"
    rows = [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []
    out: dict[str, dict] = {}
    for r in rows:
        o = out.setdefault(r["phase"], {"count": 0, "total_s": 0.0})
        o["count"] += 1
        o["total_s"] += r["seconds"]
        if "rollouts" in r:
            o["rollouts_total_s"] = o.get("rollouts_total_s", 0.0) + r["rollouts"]
    for o in out.values():
        o["mean_s"] = o["total_s"] / o["count"]
        o["total_s"] = round(o["total_s"], 2)
        if "rollouts_total_s" in o:
            o["rollouts_mean_s"] = o["rollouts_total_s"] / o["count"]
    atomic_write_json(out, run / "timing_summary.json")
    return out


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
