"""Does an image show what its caption names? Judged from the recognizer's per-cell predictions.

What counts (the same rule for real and generated images, so the real-image ceiling is meaningful):
- one object (caption names shape, colour, size, position): exactly one occupied cell, and it is the named cell and
  holds the named shape, colour and size. Per attribute, the most confident cell is compared with the caption.
- two objects (caption names each object's shape, colour, size and the relation "A <rel> B"): exactly two occupied
  cells, and the two described objects can be assigned to them so that every shape, colour and size matches and the
  relation holds, read as plain English: "A left of B" means col(A) < col(B), "above" means row(A) < row(B)
  (a diagonal placement satisfies both a horizontal and a vertical relation). Real images always satisfy the
  stricter `relation_of` rule, so this never lowers the ceiling; it only stops penalising a generator for a
  placement a person would accept.
The two most confident cells are used for the per-attribute figures when the object count is wrong.
"""

from __future__ import annotations

import numpy as np

from t2i.data.shapes import COLORS, POSITIONS, SHAPES, SIZES
from t2i.metrics.networks import CellPrediction

_COLORS = list(COLORS)


def relation_holds(rel: str, cell_a: int, cell_b: int) -> bool:
    """Plain-English reading of 'A <rel> B' for grid cells (row-major 3x3)."""
    ra, ca, rb, cb = cell_a // 3, cell_a % 3, cell_b // 3, cell_b % 3
    return {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}[rel]


def _obj_codes(o: dict) -> tuple[int, int, int]:
    return SHAPES.index(o["shape"]), _COLORS.index(o["color"]), SIZES.index(o["size"])


def score_image(occ: np.ndarray, shape: np.ndarray, color: np.ndarray, size: np.ndarray, attrs: dict) -> dict:
    """One image's predictions (each (9,)) against the attributes its caption names -> per-attribute verdicts."""
    occupied = occ > 0.5
    objs = attrs["objects"]
    order = np.argsort(-occ, kind="stable")
    out = {"n_objects": len(objs), "count": bool(occupied.sum() == len(objs))}

    def match(o: dict, cell: int) -> tuple[bool, bool, bool]:
        s, c, z = _obj_codes(o)
        return bool(shape[cell] == s), bool(color[cell] == c), bool(size[cell] == z)

    if len(objs) == 1:
        cell = int(order[0])
        s, c, z = match(objs[0], cell)
        pos = cell == POSITIONS.index(objs[0]["position"])
        out.update(shape=[s], color=[c], size=[z], position=pos, relation=None)
        out["correct"] = bool(out["count"] and s and c and z and pos)
        return out
    if len(objs) != 2:
        raise ValueError(f"attribute accuracy handles captions of one or two objects, got {len(objs)}")
    a, b = int(order[0]), int(order[1])
    best = None
    for ca, cb in ((a, b), (b, a)):  # which predicted object is the caption's first
        m1, m2 = match(objs[0], ca), match(objs[1], cb)
        rel = relation_holds(attrs["relation"], ca, cb)
        key = (sum(m1) + sum(m2), rel)
        if best is None or key > best[0]:
            best = (key, m1, m2, rel)
    _, m1, m2, rel = best
    out.update(shape=[m1[0], m2[0]], color=[m1[1], m2[1]], size=[m1[2], m2[2]], position=None, relation=rel)
    out["correct"] = bool(out["count"] and all(m1) and all(m2) and rel)
    return out


def score_predictions(pred: CellPrediction, attributes: list[dict]) -> list[dict]:
    """Per-image verdicts for a batch of predictions and the attributes of each image's caption."""
    occ, sh, co, si = (t.detach().cpu().numpy() for t in (pred.occupancy, pred.shape, pred.color, pred.size))
    return [score_image(occ[i], sh[i], co[i], si[i], a) for i, a in enumerate(attributes)]


def summarize(verdicts: list[dict]) -> dict:
    """Flat accuracies: overall, by object count, and per attribute (over objects / images where it applies)."""
    if not verdicts:
        raise ValueError("attribute accuracy needs at least one image")

    def mean(xs):
        return float(np.mean(xs)) if xs else None

    one = [v for v in verdicts if v["n_objects"] == 1]
    two = [v for v in verdicts if v["n_objects"] == 2]
    return {
        "attribute_accuracy": mean([v["correct"] for v in verdicts]),
        "attribute_accuracy_one_object": mean([v["correct"] for v in one]),
        "attribute_accuracy_two_objects": mean([v["correct"] for v in two]),
        "acc_shape": mean([x for v in verdicts for x in v["shape"]]),
        "acc_color": mean([x for v in verdicts for x in v["color"]]),
        "acc_size": mean([x for v in verdicts for x in v["size"]]),
        "acc_position": mean([v["position"] for v in one]),
        "acc_relation": mean([v["relation"] for v in two]),
        "acc_count": mean([v["count"] for v in verdicts]),
    }


def named_key(attrs: dict) -> tuple:
    """What a caption names about a scene, canonical: two scenes with equal keys fit each other's captions."""
    objs = [(o["shape"], o["color"], o["size"]) for o in attrs["objects"]]
    if len(objs) == 1:
        return (objs[0], attrs["objects"][0]["position"])
    rel = attrs["relation"]
    if objs[1] < objs[0]:  # "A left of B" == "B right of A"
        objs = [objs[1], objs[0]]
        rel = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[rel]
    return (objs[0], objs[1], rel)
