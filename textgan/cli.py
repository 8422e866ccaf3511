"""`textgan train|sample|eval|sweep|recipes` -- SeqGAN and its MLE baseline on the oracle and on caption corpora."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

EXAMPLES = """examples:
  textgan recipes                                        # list the named recipes
  textgan train oracle_seqgan                            # CPU SeqGAN recipe on the oracle -> runs/oracle_seqgan-NNN
  textgan train oracle_mle mle_epochs=50                 # MLE baseline with an override
  textgan train configs/textgan/coco_seqgan.yaml --resume latest
  textgan train coco_mle train_file=my_corpus.txt test_file=my_test.txt tokenizer=sentencepiece vocab_size=2000
  textgan sample checkpoints/textgan/coco_seqgan -n 20 --temperature 0.8 --seed 1
  textgan eval checkpoints/textgan/oracle_seqgan --json eval.json
  textgan sweep checkpoints/textgan/oracle_mle checkpoints/textgan/oracle_seqgan --out docs/textgan_sweep_oracle.png
"""


class UserError(Exception):
    pass


def _task_data_for(cfg: dict, n_test: int | None = None):
    """Held-out data of the task a checkpoint was trained on (its recipe's seed / test file)."""
    from textgan.seqgan import TrainConfig

    tc = TrainConfig(**cfg["config"]) if "config" in cfg else TrainConfig(task=cfg["task"])
    if cfg["task"] == "oracle":
        from textgan.oracle import Oracle, oracle_datasets

        oracle = Oracle.load()
        _, _, test = oracle_datasets(oracle, tc.n_train, tc.n_valid, n_test or tc.n_test, seed=tc.seed)
        return {"oracle": oracle, "test": test}
    from textgan.data import read_corpus, words

    lines = read_corpus(tc.test_file, tc.max_words)
    return {"lines": lines, "refs": [words(s) for s in lines], "tc": tc, "seq_len": tc.seq_len}


def _metrics(gen, cfg, tok, held, n, temperature, self_bleu_n=None, seed=0):
    from textgan.data import encode_lines
    from textgan.metrics import oracle_metrics, text_metrics

    if cfg["task"] == "oracle":
        return oracle_metrics(gen, held["oracle"], held["test"], n=n, temperature=temperature, seed=seed)
    test_ids = encode_lines(tok, held["lines"], held["seq_len"])
    return text_metrics(gen, tok, test_ids, held["refs"], n=n, temperature=temperature, self_bleu_n=self_bleu_n,
                        seed=seed)  # fmt: skip


def cmd_recipes(args) -> int:
    from dataclasses import asdict

    from textgan.seqgan import RECIPES, TrainConfig

    base = asdict(TrainConfig())
    for name, cfg in RECIPES.items():
        diff = {k: v for k, v in asdict(cfg).items() if v != base[k] and k != "name"}
        print(f"{name:22s} {diff}")
    return 0


def cmd_train(args) -> int:
    from textgan.seqgan import load_config, parse_overrides, train

    command = "textgan " + " ".join(shlex.quote(a) for a in args.argv)
    if args.resume:
        # the run's saved config wins; overrides given with --resume are applied on top and recorded
        cfg = load_config(args.config)
        run = train(cfg, args.runs_dir, resume=args.resume, command=command,
                    resume_overrides=parse_overrides(args.overrides))  # fmt: skip
    else:
        run = train(load_config(args.config, args.overrides), args.runs_dir, command=command)
    print(run)
    return 0


def cmd_sample(args) -> int:
    import torch

    from textgan.checkpoint import load_generator
    from textgan.data import decode_batch

    gen, cfg, tok = load_generator(args.run)
    g = torch.Generator().manual_seed(args.seed)
    seqs = gen.sample(args.n, temperature=args.temperature, top_k=args.top_k, generator=g)
    lines = decode_batch(tok, seqs) if tok is not None else [" ".join(map(str, s)) for s in seqs.tolist()]
    print("\n".join(lines))
    return 0


def cmd_eval(args) -> int:
    import torch

    from textgan.checkpoint import find_model_dir, load_generator

    torch.set_num_threads(args.threads)
    t0 = time.time()
    gen, cfg, tok = load_generator(args.run, expect_task=args.task)
    held = _task_data_for(cfg)
    res = {"checkpoint": str(find_model_dir(args.run)), "task": cfg["task"], "recipe": cfg.get("recipe", "")}
    res.update(_metrics(gen, cfg, tok, held, args.n, args.temperature, seed=args.seed))
    res["seed"] = args.seed
    res["eval_seconds"] = round(time.time() - t0, 2)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


def cmd_sweep(args) -> int:
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from textgan.checkpoint import load_generator

    torch.set_num_threads(args.threads)
    models = [load_generator(r) for r in args.runs]
    tasks = {cfg["task"] for _, cfg, _ in models}
    if len(tasks) != 1:
        raise UserError(f"sweep needs checkpoints of one task, got {sorted(tasks)}")
    task = tasks.pop()
    held = _task_data_for(models[0][1])
    curves = {}
    for path, (gen, cfg, tok) in zip(args.runs, models):
        label = args.labels[len(curves)] if args.labels else cfg.get("mode", Path(path).name)
        pts = []
        for T in args.temperatures:
            m = _metrics(gen, cfg, tok, held, args.n, T, self_bleu_n=args.n)
            pts.append(m)
            print(json.dumps({"model": label, **m}), file=sys.stderr)
        curves[label] = pts
    x, y = ("nll_test", "nll_oracle") if task == "oracle" else ("self_bleu5", "bleu5")
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for label, pts in curves.items():
        ax.plot([p[x] for p in pts], [p[y] for p in pts], "o-", label=label)
        for p in pts:
            ax.annotate(f"{p['temperature']:g}", (p[x], p[y]), fontsize=7, textcoords="offset points", xytext=(3, 3))
    if task == "oracle":
        ax.set_xlabel("NLL-test (diversity: lower is better)")
        ax.set_ylabel("NLL-oracle (quality: lower is better)")
    else:
        ax.set_xlabel("Self-BLEU-5 (lower = more diverse)")
        ax.set_ylabel("BLEU-5 vs test (higher = better quality)")
    ax.set_title(f"temperature sweep ({task}, n={args.n})\npoint labels: sampling temperature", fontsize=10)
    ax.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    js = Path(args.out).with_suffix(".json")
    js.write_text(json.dumps({"task": task, "runs": args.runs, "n": args.n, "curves": curves}, indent=1) + "\n")
    print(f"wrote {args.out} and {js}")
    return 0


def cmd_bench(args) -> int:
    from textgan.bench import run_bench

    res = run_bench(args.threads, args.mle_seqs, args.d_seqs, args.rollouts, d_precision=args.d_precision,
                    fused_adam=args.fused_adam)  # fmt: skip
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="textgan", description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("recipes", help="list the named recipes")
    s.set_defaults(fn=cmd_recipes)

    s = sub.add_parser("train", help="train a recipe or YAML config", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    s.add_argument("config", help="recipe name (see `textgan recipes`) or a YAML file")
    s.add_argument("overrides", nargs="*", help="key=value config overrides")
    s.add_argument("--resume", help="'latest' (newest run of this recipe) or a run folder")
    s.add_argument("--runs-dir", default="runs")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("sample", help="print samples from a run or checkpoint")
    s.add_argument("run")
    s.add_argument("-n", type=int, default=20)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_sample)

    s = sub.add_parser("eval", help="metrics of a run or checkpoint (flat JSON)")
    s.add_argument("run")
    s.add_argument("--json", help="also write the metrics to this file")
    s.add_argument("-n", type=int, default=10000, help="generated samples (and oracle test samples)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sampling seed (default 0); another seed re-measures a model on independent samples",
    )
    s.add_argument("--task", choices=["oracle", "text"], help="fail unless the checkpoint is for this task")
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("sweep", help="temperature sweep: quality vs diversity curves of several models on one plot")
    s.add_argument("runs", nargs="+")
    s.add_argument("--labels", nargs="*")
    s.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3])
    s.add_argument("-n", type=int, default=10000)
    s.add_argument("--out", required=True, help="PNG path (a .json with the points is written beside it)")
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_sweep)
    s = sub.add_parser("bench", help="seconds per phase (MLE epoch, D epoch, g-step with rollouts, BLEU), paper sizes")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--mle-seqs", type=int, default=10000)
    s.add_argument("--d-seqs", type=int, default=20000)
    s.add_argument("--rollouts", type=int, default=16)
    s.add_argument(
        "--d-precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="discriminator under bf16 autocast (fast with AVX512-BF16/AMX; the recipes' d_precision)",
    )
    s.add_argument("--fused-adam", action="store_true", help="torch's fused Adam (the recipes' fused_adam)")
    s.add_argument("--json")
    s.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from textgan.checkpoint import CheckpointError
    from textgan.data import CorpusError

    try:
        return args.fn(args)
    except (UserError, CorpusError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"textgan {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
