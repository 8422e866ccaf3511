"""Where do a layout model's two-object errors come from: the layout it infers from the caption, or the UNet (or
the VQGAN prior) drawing a layout it is given? For the first `--scenes` two-object test captions:

- the layout net alone, against the scenes' true boxes: token-level recall and precision of "this word names an
  object", the mean L1 of its boxes, how often each object's predicted box centre lies inside its true box, and
  how often the two objects' predicted centres are in the caption's order along the relation's axis;
- the images drawn from the predicted layout and from the true one (the scene's boxes, painted by the same layout
  net), binned by the evaluator as in benchmarks/relation_breakdown.py (relation right / reversed / neither /
  wrong count). The true-layout row is the UNet's ceiling; the gap to it is the layout net's share of the errors.

    python benchmarks/layout_oracle.py runs/shapes_diffusion_layout-000/export --scenes 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import write_json  # noqa: E402
from benchmarks.relation_breakdown import BINS, breakdown, open_pipeline, scenes  # noqa: E402


def true_layout(pipe, captions: list[str], attributes: list[dict]):
    """(boxes (B, T, 4), valid (B, T), painted map (B, L, R, R)) of the scenes' true layout."""
    import torch

    from t2i.models.diffusion import grounding_targets

    enc = pipe.text_encoder
    f = enc.encode(list(captions))
    boxes, valid = grounding_targets(enc.tokenizer, captions, attributes, f.words.shape[1], enc.max_length)
    # the grid the map is painted on: the UNet's (diffusion) or the prior's code grid (VQGAN)
    R = int(pipe.code_side) if hasattr(pipe, "code_side") else int(pipe.unet.config.sample_size)
    net = pipe.layout_net
    with torch.no_grad():
        lay = net.paint(f.words.to(net.dtype), boxes.to(net.dtype), valid.to(net.dtype), R, R, mask=f.mask)
    return boxes, valid, lay


def predictor_scores(pipe, captions: list[str], attributes: list[dict]) -> dict:
    """The layout net's inferred layout against the true one (see the module docstring)."""
    import torch

    boxes, valid, _ = true_layout(pipe, captions, attributes)
    f = pipe.text_encoder.encode(list(captions))
    net = pipe.layout_net
    with torch.no_grad():
        logit, pred = net.predict(f.words.to(net.dtype), f.mask)
    pred, hit, m = pred.float(), logit > 0, f.mask.bool()
    tp = (hit & valid).sum().item()
    inside = order = n_obj = 0
    for b in range(len(captions)):
        groups: dict[tuple, list[int]] = {}
        for t in valid[b].nonzero().flatten().tolist():
            groups.setdefault(tuple(boxes[b, t].tolist()), []).append(t)
        centres = []
        for box, toks in groups.items():
            c = pred[b, toks].mean(0)
            cx, cy = float(c[0] + c[2]) / 2, float(c[1] + c[3]) / 2
            inside += box[0] <= cx <= box[2] and box[1] <= cy <= box[3]
            n_obj += 1
            centres.append((box, cx, cy))
        if len(centres) == 2:
            (b0, x0, y0), (b1, x1, y1) = centres
            horizontal = attributes[b]["relation"] in ("left of", "right of")
            truth = (b0[0] + b0[2]) < (b1[0] + b1[2]) if horizontal else (b0[1] + b0[3]) < (b1[1] + b1[3])
            order += truth == ((x0 < x1) if horizontal else (y0 < y1))
    return {
        "recall": tp / max(1, int(valid.sum())),
        "precision": tp / max(1, int((hit & m).sum())),
        "box_l1": float((pred - boxes).abs().mean(-1)[valid].mean()),
        "centre_inside": inside / max(1, n_obj),
        "order_right": order / len(captions),
    }


def run(target, num: int = 200, seed: int = 0) -> dict:
    pipe = open_pipeline(target)
    if getattr(pipe, "layout_net", None) is None:
        raise SystemExit(f"{target}: no layout net in this pipeline (train with model.layout_channels > 0)")
    _, _, caps, attrs = scenes(num)
    out = {"predictor": predictor_scores(pipe, caps, attrs)}
    out["predicted layout"] = breakdown(pipe, num, seed)["groups"]["all"]
    lay = true_layout(pipe, caps, attrs)[2]
    out["true layout"] = breakdown(pipe, num, seed, layout=lay)["groups"]["all"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="a diffusion or VQGAN export/bundle/run folder with a layout net")
    p.add_argument("--scenes", type=int, default=200, help="two-object test captions (default 200)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's noise (default 0)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    r = run(a.target, a.scenes, a.seed)
    print(f"== {a.target}: {a.scenes} two-object test captions")
    print("layout net: " + ", ".join(f"{k} {v:.3f}" for k, v in r["predictor"].items()))
    print("| drawn from | " + " | ".join(BINS) + " |")
    print("|---" * (len(BINS) + 1) + "|")
    for k in ("predicted layout", "true layout"):
        print(f"| {k} | " + " | ".join(f"{r[k][b]:.3f}" for b in BINS) + " |")
    if a.json:
        write_json(a.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
