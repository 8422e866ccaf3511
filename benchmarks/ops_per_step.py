"""Operator calls per training step of the Shapes recipes: why they cannot fill a GPU at their batch sizes.

Each recipe's family is built as `t2i train` builds it and one full step is run on the CPU (every phase's forward,
backward and optimizer step, then the EMA update) under a dispatch counter. Every aten operator is at least one
host-side dispatch, and on a GPU almost every one that computes is a kernel launch; at a few microseconds each,
ops x ~10 us is a floor on a step's time that no GPU speeds up, however small the model. The host-side data work of
a step (batch assembly from the image cache, caption features from the feature cache, mismatch selection) is timed
separately.

    python benchmarks/ops_per_step.py configs/t2i/shapes_stackgan.yaml configs/t2i/shapes_attngan.yaml \
        configs/t2i/shapes_diffusion.yaml configs/t2i/shapes_vq_prior.yaml \
        --set model.autoencoder=checkpoints/shapes64/vqgan
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def count_step(fam, batch, step: int = 1) -> Counter:
    """aten op calls (by name) of one training step of a family bound to a CPU stand-in accelerator."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    with Count() as c:
        for ph in fam.phases:
            if step % ph.interval:
                continue
            for n, m in fam.p.items():
                m.requires_grad_(n in ph.trains)
            out = ph.fn(batch, step)
            # The loop's one finiteness check per phase; losses reach the host only on log steps.
            bool(torch.isfinite(torch.cat([v.detach().float().reshape(-1) for v in out.values()
                                           if torch.is_tensor(v)])).all())  # fmt: skip
            out["loss"].backward()
            opt = fam.optimizers[ph.optimizer]
            opt.step()
            opt.zero_grad(set_to_none=True)
        fam.after_step(step + 1)
    return c.ops


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides (applied where they exist)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)

    import torch

    from t2i.text import TextEncoder, default_cache_dir
    from t2i.train import FAMILIES, Batches, DataConfig, TrainConfig, _from_dict, load_recipe

    torch.set_num_threads(1)
    enc = TextEncoder(cache_dir=default_cache_dir())
    rows = []
    for path in args.recipes:
        recipe = load_recipe(path, [])
        for kv in args.set:  # only the keys this recipe has (model.autoencoder means nothing to a GAN)
            sec, key = kv.split("=", 1)[0].split(".", 1)
            if key in (recipe.get(sec) or {}):
                recipe = load_recipe(path, [kv])
        tcfg = _from_dict(TrainConfig, dict(recipe["train"]), "train")
        dcfg = _from_dict(DataConfig, dict(recipe["data"]), "data")
        fam = FAMILIES[recipe["family"]](recipe["family"], dict(recipe["model"]), tcfg)
        fam.data_cfg = dcfg
        acc = SimpleNamespace(device=torch.device("cpu"), process_index=0, num_processes=1, unwrap_model=lambda m: m,
                              is_main_process=True)  # fmt: skip
        fam.bind(acc, enc, fam.modules)
        data = Batches(_from_dict(DataConfig, {**recipe["data"], "length": 4 * tcfg.batch_size}, "data"),
                       tcfg.batch_size, 0, 1, 0)  # fmt: skip
        for s in range(4):  # first epoch: draw and cache every image, warm the feature and latent caches
            count_step(fam, data.get(s), s)
        t0 = time.perf_counter()
        for s in range(4, 8):
            batch = data.get(s)
            enc.encode(batch["captions"])
        host_ms = (time.perf_counter() - t0) / 4 * 1000
        ops = count_step(fam, data.get(8), 8)
        total = sum(ops.values())
        row = {"recipe": recipe["name"], "batch_size": tcfg.batch_size, "aten_ops_per_step": total,
               "floor_ms_at_10us_per_op": round(total * 0.01, 1), "data_and_features_ms": round(host_ms, 1),
               "top_ops": dict(ops.most_common(8))}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| recipe | batch | aten ops / step | floor at 10 us/op | batch + features (host) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['batch_size']} | {r['aten_ops_per_step']:,} | {r['floor_ms_at_10us_per_op']} ms "
              f"| {r['data_and_features_ms']} ms |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
