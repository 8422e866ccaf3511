"""Does the relation word change what a model draws? Every two-object test caption of relation_breakdown is drawn
twice from the same noise: as written, and with its relation word inverted ("A left of B" -> "A right of B", "over"
-> "under"), which asks for the other picture. Each image is binned against its own caption (right / reversed /
neither / count) and the pairs are counted:

- both right: the word moved the objects where it said (what a model that reads the relation does);
- right + reversed, either way round: the word changed nothing that matters; the noise chose the layout and one of
  the two captions got lucky (what a model that ignores the relation does, every time);
- and the pixel distance between the two images, to see how much the word moves at all.

    python benchmarks/relation_flip.py checkpoints/shapes64/diffusion --scenes 200
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import write_json  # noqa: E402
from benchmarks.relation_breakdown import _INVERSE, classify, draw, open_pipeline, read, scenes  # noqa: E402

# Every relation phrase of the Shapes captions and the phrase of the inverse relation it becomes.
_FLIP_WORDS = {"left": "right", "right": "left", "above": "below", "below": "above", "over": "under",
               "under": "over", "higher than": "beneath", "beneath": "higher than"}  # fmt: skip
_FLIP_RE = re.compile(r"\b(" + "|".join(sorted(_FLIP_WORDS, key=len, reverse=True)) + r")\b")


def flip_caption(caption: str) -> str:
    """The caption with its relation inverted: the same two objects, the other arrangement."""
    out, n = _FLIP_RE.subn(lambda m: _FLIP_WORDS[m.group(1)], caption)
    if n != 1:
        raise ValueError(f"expected exactly one relation word in {caption!r}, found {n}")
    return out


PAIRS = ("both right", "right, flip reversed", "reversed, flip right", "other")


def flip_pairs(target, num: int = 200, seed: int = 0) -> dict:
    """target: a checkpoint path or a loaded pipeline -> {"pairs": {pair: share}, "pairs_count_right": the same
    shares among the pairs whose two images both have two objects ("n_count_right" of them), "right": share for the
    captions as written, "right_flipped": for the flipped ones, "pixel_l1": mean |image - flipped image| in [0, 1]
    units, "n": captions}"""
    ev, _, caps, attrs = scenes(num)
    flipped = [flip_caption(c) for c in caps]
    attrs_f = [{**a, "relation": _INVERSE[a["relation"]]} for a in attrs]
    pipe = open_pipeline(target)
    a, b = draw(pipe, caps, seed), draw(pipe, flipped, seed)  # caption k gets the same noise in both
    ba, bb = classify(read(ev, a), attrs), classify(read(ev, b), attrs_f)
    pairs, counted = dict.fromkeys(PAIRS, 0), dict.fromkeys(PAIRS, 0)
    for x, y in zip(ba, bb):
        key = {("right", "right"): "both right", ("right", "reversed"): "right, flip reversed",
               ("reversed", "right"): "reversed, flip right"}.get((x, y), "other")  # fmt: skip
        pairs[key] += 1
        if "count" not in (x, y):
            counted[key] += 1
    n_counted = sum(counted.values())
    l1 = ((a.float() - b.float()).abs().mean() / 2).item()  # images are in [-1, 1]
    return {"pairs": {k: v / num for k, v in pairs.items()}, "right": ba.count("right") / num,
            "pairs_count_right": {k: v / max(n_counted, 1) for k, v in counted.items()}, "n_count_right": n_counted,
            "right_flipped": bb.count("right") / num, "pixel_l1": l1, "n": num}  # fmt: skip


def negative_flip(target, num: int = 200, seed: int = 0, guidance: float | None = None) -> dict:
    """A diffusion model's relation bins (relation_breakdown's) for the captions as written, sampled plainly and with
    each caption's relation-flipped twin as the negative caption (guidance away from the other arrangement instead
    of from the empty caption), same noise. If the flip moves the layout the right way, the model's conditional
    knows the relation and the sampler can use it; this is a diagnostic, not how `t2i eval` samples."""
    ev, _, caps, attrs = scenes(num)
    pipe = open_pipeline(target)
    if getattr(pipe, "family", None) != "diffusion":
        raise SystemExit(f"{target}: negative captions need a diffusion pipeline")
    out = {}
    for name, neg in (("plain", None), ("negative = flipped caption", [flip_caption(c) for c in caps])):
        bins = classify(read(ev, draw(pipe, caps, seed, guidance_scale=guidance, negative_captions=neg)), attrs)
        out[name] = {b: bins.count(b) / num for b in ("right", "reversed", "neither", "count")}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", help="checkpoints / run folders")
    p.add_argument("--scenes", type=int, default=200, help="two-object test captions (default 200)")
    p.add_argument("--seed", type=int, default=0, help="the generators' noise (default 0)")
    p.add_argument(
        "--negative",
        action="store_true",
        help="diffusion only: also sample each caption with its flipped twin as the negative caption",
    )
    p.add_argument("--guidance", type=float, help="with --negative: the guidance scale (default: the pipeline's)")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    res = {}
    print("| model | pairs | both right | right, flip reversed | reversed, flip right | other | right (as written / "
          "flipped) | pixel L1 |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for t in a.targets:
        r = res[t] = flip_pairs(t, a.scenes, a.seed)
        rows = (("all", "pairs", r["n"]), ("both counts right", "pairs_count_right", r["n_count_right"]))
        tail = f"{r['right']:.3f} / {r['right_flipped']:.3f} | {r['pixel_l1']:.3f}"
        for label, key, n in rows:
            cells = " | ".join(f"{r[key][k]:.3f}" for k in PAIRS)
            print(f"| {t} | {label}: {n} | {cells} | {tail} |")
    if a.negative:
        print("\n| model | sampling | right | reversed | neither | count |\n|---|---|---|---|---|---|")
        for t in a.targets:
            r = res[t]["negative"] = negative_flip(t, a.scenes, a.seed, a.guidance)
            for name, row in r.items():
                print(f"| {t} | {name} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |")
    if a.json:
        write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
