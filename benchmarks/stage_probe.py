"""Which generator stage gets each attribute right? Attribute accuracy of every stage's image of a StackGAN/AttnGAN
checkpoint (lower stages upsampled bilinearly to the final size), next to real test images put through the same
down- and upsampling, on the same test captions and seed as `t2i eval`.

A stage whose real-image row scores ~1 but whose generated row does not is a generator that has not learned that
attribute at that resolution; a refinement stage that leaves a row where the stage below put it adds nothing there.

    python benchmarks/stage_probe.py checkpoints/shapes64/stackgan checkpoints/shapes64/attngan --num-samples 500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import write_json  # noqa: E402

KEYS = ("attribute_accuracy", "attribute_accuracy_one_object", "attribute_accuracy_two_objects", "acc_color",
        "acc_shape", "acc_size", "acc_position", "acc_relation")  # fmt: skip


class StageView:
    """A pipeline whose images are those of one generator stage, resized to the final resolution."""

    def __init__(self, pipe, stage: int):
        self.pipe, self.stage = pipe, stage
        self.resolution = getattr(pipe, "resolution", None)

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, captions, num_images_per_caption: int = 1, seed: int = 0, batch_size: int = 64):
        import torch.nn.functional as F

        G, forward = self.pipe.generator, self.pipe.generator.forward

        def stage_forward(*a, **k):
            out = forward(*a, **k)
            x, R = out.images[self.stage], out.images[-1].shape[-1]
            out.images[-1] = x if x.shape[-1] == R else F.interpolate(x.float(), size=R, mode="bilinear")
            return out

        G.forward = stage_forward
        try:
            return self.pipe(captions, num_images_per_caption, seed, batch_size)
        finally:
            del G.forward  # back to the class's forward


def real_at(size: int, num_samples: int) -> dict:
    """Real test images area-downsampled to `size` and upsampled back (what a perfect stage of that size scores)."""
    import torch.nn.functional as F

    from t2i.metrics.core import EvalContext, attribute_accuracy

    ctx = EvalContext("real", "shapes", num_samples, progress=False)
    x = ctx.images
    if size != x.shape[-1]:
        ctx.__dict__["images"] = F.interpolate(F.interpolate(x, size=size, mode="area"), size=x.shape[-1],
                                               mode="bilinear")  # fmt: skip
    return attribute_accuracy(ctx)


def probe(checkpoint: str, num_samples: int = 500) -> list[dict]:
    import torch

    from t2i.metrics.core import evaluate
    from t2i.pipelines import load_pipeline

    pipe = load_pipeline(checkpoint)
    if getattr(pipe, "family", None) not in ("stackgan", "attngan"):
        raise SystemExit(f"{checkpoint}: the stage probe is for StackGAN/AttnGAN checkpoints")
    with torch.no_grad():
        z = torch.zeros(1, pipe.z_dim)
        f = pipe.text_encoder.encode(["a red circle"])
        eps = [torch.zeros(1, int(pipe.model_cfg.cond_dim))] * pipe.generator.num_ca
        sizes = [x.shape[-1] for x in pipe.generator(z, f.sentence, f.words, f.mask, ca_eps=eps).images]
    rows = []
    for i, size in enumerate(sizes):
        r = evaluate(StageView(pipe, i), "shapes", ["attribute_accuracy"], num_samples=num_samples, progress=False)
        real = real_at(size, num_samples)
        rows.append({"stage": i, "size": size, **{k: r[k] for k in KEYS}, "real": {k: real[k] for k in KEYS}})
        print(f"{checkpoint} stage {i} ({size}x{size}): " + " | ".join(f"{k} {r[k]:.3f} (real {real[k]:.3f})"
                                                                        for k in KEYS), flush=True)  # fmt: skip
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="StackGAN/AttnGAN export folders")
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = {c: probe(c, a.num_samples) for c in a.checkpoints}
    if a.json:
        write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
