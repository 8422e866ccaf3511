"""Scene-paired FID: which objects' placement costs a model its FID? For the first `--scenes` one-object and
two-object Shapes test scenes (caption k = the scene's caption k mod 5, sampler noise `--seed`), each target draws
one image per caption and is scored by the Frechet distance, in the bundled evaluator's feature space, to the real
images of the same scenes. Same scenes on both sides, so unlike `t2i eval`'s FID (against unrelated test images)
this is low for a model that draws what the caption says where the scene has it; a real-vs-real row (the first half
of the scenes against the second) shows what unrelated scenes score at this sample size.

For a diffusion model with a layout net, `--true-layout` adds a row drawn from the scenes' true boxes (as
benchmarks/layout_oracle.py): the gap between the predicted-box and the true-box rows is what the layout net's
boxes cost in FID.

    python benchmarks/layout_fid.py checkpoints/shapes64/diffusion_layout checkpoints/shapes64/diffusion \
        --scenes 200 --true-layout
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import write_json  # noqa: E402
from benchmarks.layout_oracle import true_layout  # noqa: E402
from benchmarks.relation_breakdown import draw, open_pipeline  # noqa: E402


def paired_scenes(num: int, size: int = 64, seed: int = 0) -> dict:
    """{1: (captions, attributes, images (N, 3, size, size)), 2: (...)}: the first `num` test scenes of each count."""
    import torch

    from t2i.data.dataset import pil_to_tensor
    from t2i.data.shapes import ShapesConfig, make_sample

    cfg, out, i = ShapesConfig(size=size, seed=seed), {1: ([], [], []), 2: ([], [], [])}, 0
    while min(len(g[0]) for g in out.values()) < num:
        s = make_sample(cfg, "test", i)
        i += 1
        caps, attrs, imgs = out[len(s.attributes["objects"])]
        if len(caps) < num:
            caps.append(s.captions[len(caps) % len(s.captions)])
            attrs.append(s.attributes)
            imgs.append(pil_to_tensor(s.image))
    return {n: (c, a, torch.stack(x)) for n, (c, a, x) in out.items()}


def run(targets, num: int = 200, seed: int = 0, with_true_layout: bool = False) -> dict:
    """targets: checkpoint paths or loaded pipelines -> {"1 object": {row: fid}, "2 objects": {...}}."""
    import torch

    from t2i.metrics.core import frechet_distance
    from t2i.metrics.networks import load_evaluator

    ev = load_evaluator()
    pipes = {str(t): open_pipeline(t) for t in targets}
    feats = lambda x: torch.cat([ev.features(x[k : k + 100]) for k in range(0, len(x), 100)]).float()  # noqa: E731
    out = {}
    with torch.no_grad():
        for n, (caps, attrs, imgs) in paired_scenes(num, ev.config.resolution).items():
            real = feats(imgs)
            half = len(real) // 2
            rows = {"real vs real (other scenes)": frechet_distance(real[:half], real[half:])}
            for name, pipe in pipes.items():
                rows[name] = frechet_distance(real, feats(draw(pipe, caps, seed)))
                if with_true_layout and getattr(pipe, "layout_net", None) is not None:
                    lay = true_layout(pipe, caps, attrs)[2]
                    rows[f"{name} (true boxes)"] = frechet_distance(real, feats(draw(pipe, caps, seed, layout=lay)))
            out["1 object" if n == 1 else "2 objects"] = rows
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", help="checkpoint / run folders")
    p.add_argument("--scenes", type=int, default=200, help="test scenes of each object count (default 200)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's noise (default 0)")
    p.add_argument("--true-layout", action="store_true", help="layout models: also draw from the true boxes")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    r = run(a.targets, a.scenes, a.seed, a.true_layout)
    print(f"scene-paired FID, {a.scenes} test scenes per object count (lower: closer to the captions' own scenes)")
    print("| drawn by | " + " | ".join(r) + " |")
    print("|---" * (len(r) + 1) + "|")
    for row in next(iter(r.values())):
        print(f"| {row} | " + " | ".join(f"{r[g][row]:.1f}" for g in r) + " |")
    if a.json:
        write_json(a.json, r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
