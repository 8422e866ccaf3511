"""Safetensors + JSON checkpoints, written atomically; no pickles anywhere."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from textgan import __version__


class CheckpointError(ValueError):
    """A path that is not a usable textgan checkpoint (missing, another tool's, or the wrong task)."""


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def atomic_write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into flat tensors (for safetensors) and JSON-able param groups."""
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{prefix}.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str, meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_dir_atomically(target: Path, write) -> None:
    """Build a checkpoint directory in `<target>.tmp`, then swap it in; a kill at any point leaves a loadable one."""
    tmp, old = target.with_name(target.name + ".tmp"), target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def existing_dir(target: Path) -> Path | None:
    """The checkpoint dir to resume from: target, or target.old if a kill hit between the two renames."""
    old = target.with_name(target.name + ".old")
    return target if target.exists() else (old if old.exists() else None)


def export_generator(gen, directory: Path, task: str, tokenizer=None, extra: dict | None = None) -> None:
    """A self-contained model folder: generator.safetensors + config.json (+ vocab.json / tokenizer.model)."""
    from dataclasses import asdict

    def write(d: Path):
        atomic_save_tensors(gen.state_dict(), d / "generator.safetensors")
        cfg = {"format": "textgan-generator", "version": __version__, "task": task, "generator": asdict(gen.config)}
        cfg.update(extra or {})
        if tokenizer is not None:
            tokenizer.save(d)
            cfg["tokenizer"] = tokenizer.kind
        atomic_write_json(cfg, d / "config.json")

    save_dir_atomically(Path(directory), write)


def find_model_dir(path: str | Path) -> Path:
    """A model folder from a model folder itself, a run folder (its `model/`) or a bundled checkpoint."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such run or checkpoint")
    for cand in (p, p / "model"):
        if (cand / "config.json").exists() and (cand / "generator.safetensors").exists():
            return cand
    raise CheckpointError(f"{p}: not a textgan checkpoint (expected config.json + generator.safetensors, or model/)")


def load_generator(path: str | Path, expect_task: str | None = None):
    """-> (generator, config dict, tokenizer or None); clear errors for foreign or wrong-task checkpoints."""
    from textgan.data import load_tokenizer
    from textgan.models import Generator, GeneratorConfig

    d = find_model_dir(path)
    cfg = json.loads((d / "config.json").read_text())
    if cfg.get("format") != "textgan-generator":
        raise CheckpointError(f"{d}: config.json is not a textgan generator config (format={cfg.get('format')!r})")
    if expect_task and cfg["task"] != expect_task:
        raise CheckpointError(f"{d}: checkpoint is for task {cfg['task']!r}, but task {expect_task!r} was asked for")
    gen = Generator(GeneratorConfig(**cfg["generator"]))
    gen.load_state_dict(load_file(str(d / "generator.safetensors")))
    gen.eval()
    return gen, cfg, load_tokenizer(d)
