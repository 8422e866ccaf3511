"""How does a model get two-object relations wrong? Each two-object test caption's image, read by the bundled
evaluator, is put in one of four bins: wrong object count, relation right, relation reversed (the two objects swapped:
"A left of B" drawn as B left of A), or neither (e.g. "left of" drawn one above the other). The bins are also split by
which object the caption names first (templates like "B right of A" name the relation's second object first) and
by the relation's axis.

A model that reads which two objects and which axis but not which object goes where shows up as relation ~ reversed:
the signature of a binding failure rather than of a layout failure.

    python benchmarks/relation_breakdown.py checkpoints/shapes64/diffusion real --scenes 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import write_json  # noqa: E402

BINS = ("right", "reversed", "neither", "count")
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def two_object_captions(num: int, size: int = 64, seed: int = 0) -> list[tuple[str, dict, dict]]:
    """(caption, attributes, tags) of the first `num` two-object test scenes, caption k = index mod 5 (so the
    templates vary); tags: which object the caption names first ("A" = the relation's subject, "B", or "?") and
    the axis (horizontal / vertical)."""
    from t2i.data.shapes import ShapesConfig, make_sample, object_mentions

    cfg = ShapesConfig(size=size, seed=seed)
    out, i = [], 0
    while len(out) < num:
        s = make_sample(cfg, "test", i)
        i += 1
        if len(s.attributes["objects"]) != 2:
            continue
        cap = s.captions[len(out) % len(s.captions)]
        spans = object_mentions(cap, s.attributes)
        starts = [min((a for a, _ in sp), default=None) for sp in spans]
        first = "?" if None in starts else ("A" if starts[0] < starts[1] else "B")
        axis = "horizontal" if s.attributes["relation"] in ("left of", "right of") else "vertical"
        out.append((cap, s.attributes, {"first": first, "axis": axis}))
    return out


def classify(pred, attributes: list[dict]) -> list[str]:
    """The bin of every image (CellPrediction of the batch, the caption attributes)."""
    from t2i.metrics.attributes import score_predictions

    verdicts = score_predictions(pred, attributes)
    flipped = [{**a, "relation": _INVERSE[a["relation"]]} for a in attributes]
    inverse = score_predictions(pred, flipped)
    bins = []
    for v, w in zip(verdicts, inverse):
        if not v["count"]:
            bins.append("count")
        else:
            bins.append("right" if v["relation"] else "reversed" if w["relation"] else "neither")
    return bins


def open_pipeline(target):
    """A checkpoint path -> its loaded pipeline; anything else (a loaded pipeline, a stand-in) is returned as it is.
    Progress bars off."""
    from t2i.pipelines import load_pipeline

    pipe = load_pipeline(target) if isinstance(target, (str, Path)) else target
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe, captions: list[str], seed: int = 0, chunk: int = 50, **kwargs):
    """One image per caption, in chunks of `chunk` with seed + the chunk's first index, so caption k gets the same
    noise in every call. kwargs: per-caption lists (negative_captions) or tensors (layout) are sliced with the
    chunk; anything else goes to every call as it is."""
    import torch

    def part(v, k):
        return v[k : k + chunk] if isinstance(v, (list, torch.Tensor)) else v

    return torch.cat([pipe(captions[k : k + chunk], 1, seed=seed + k, **{n: part(v, k) for n, v in kwargs.items()})
                      for k in range(0, len(captions), chunk)])  # fmt: skip


def read(ev, images):
    """The evaluator's cell predictions for a batch of images (in chunks of 256)."""
    import torch

    from t2i.metrics.networks import decode_cells

    with torch.no_grad():
        return decode_cells(torch.cat([ev.recognizer(images[k : k + 256]) for k in range(0, len(images), 256)]))


def scenes(num: int):
    """(evaluator, items of two_object_captions, captions, attributes) at the bundled evaluator's resolution."""
    from t2i.metrics.networks import load_evaluator

    ev = load_evaluator()
    items = two_object_captions(num, ev.config.resolution)
    return ev, items, [c for c, _, _ in items], [a for _, a, _ in items]


def breakdown(target, num: int = 200, seed: int = 0, **kwargs) -> dict:
    """target: a checkpoint path, "real", or a loaded pipeline (anything called like one: captions, k, seed=) ->
    {"groups": {group: {bin: share, "n": count}}, "bins": [...], "captions": [...]}. kwargs go to `draw`."""
    import torch

    from t2i.data.dataset import pil_to_tensor
    from t2i.data.shapes import ShapesConfig, make_sample

    ev, items, caps, attrs = scenes(num)
    if isinstance(target, str) and target == "real":
        cfg, imgs, i = ShapesConfig(size=ev.config.resolution), [], 0
        while len(imgs) < num:  # the same scenes' real images
            s = make_sample(cfg, "test", i)
            i += 1
            if len(s.attributes["objects"]) == 2:
                imgs.append(pil_to_tensor(s.image))
        images = torch.stack(imgs)
    else:
        images = draw(open_pipeline(target), caps, seed, **kwargs)
    bins = classify(read(ev, images), attrs)
    groups: dict[str, list[str]] = {"all": bins}
    for (_, _, tags), b in zip(items, bins):
        groups.setdefault(f"first named: {tags['first']}", []).append(b)
        groups.setdefault(f"axis: {tags['axis']}", []).append(b)
    table = {g: {**{k: bs.count(k) / len(bs) for k in BINS}, "n": len(bs)} for g, bs in sorted(groups.items())}
    return {"groups": table, "bins": bins, "captions": caps}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", help="checkpoints/run folders, or 'real'")
    p.add_argument("--scenes", type=int, default=200, help="two-object test captions (default 200)")
    p.add_argument("--seed", type=int, default=0, help="the generators' noise (default 0)")
    p.add_argument("--json", help="write the tables (and every caption's bin) here")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = {}
    for t in a.targets:
        r = out[t] = breakdown(t, a.scenes, a.seed)
        print(f"== {t}: {a.scenes} two-object test captions")
        print("| group | n | " + " | ".join(BINS) + " |")
        print("|---" * (len(BINS) + 2) + "|")
        for g, row in r["groups"].items():
            print(f"| {g} | {row['n']} | " + " | ".join(f"{row[k]:.3f}" for k in BINS) + " |")
    if a.json:
        write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
