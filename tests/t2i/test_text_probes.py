"""benchmarks/relation_probe.py and layout_decoder_probe.py: their labels and scores say what their docs say."""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import layout_decoder_probe as ldp  # noqa: E402
from benchmarks import relation_probe as rp  # noqa: E402
from t2i.data import shapes as S  # noqa: E402


def test_relation_probe_examples_point_at_the_objects_colour_word_and_label():
    cfg = S.ShapesConfig(seed=0)
    colour_of = {w: c for c, ws in S._COLOR_WORDS.items() for w in ws}
    seen = 0
    for i in range(40):  # scene i's rows: those examples(i + 1) adds to examples(i) (the streams are deterministic)
        scene = S.make_scene(cfg, "train", i)[0]
        for target in ("direction", "shape"):
            rows = rp.examples(cfg, "train", i + 1, 3, target)[len(rp.examples(cfg, "train", i, 3, target)) :]
            for cap, (a, b), label in rows:
                k = [o.color for o in scene.objects].index(colour_of[cap[a:b]])  # the object the word names
                want = scene.objects[k].shape if target == "shape" else (
                    scene.relation if k == 0 else S._INVERSE[scene.relation])  # fmt: skip
                assert label == want and "background" not in cap
                seen += 1
    assert seen > 20


def _scene(*objs):
    return S.Scene("gray", tuple(S.ShapeObject(sh, c, "small", pos) for sh, c, pos in objs))


def test_layout_scores_position_and_relation_by_hand():
    colors = list(S.COLORS)
    one = _scene(("circle", "red", "top left"))
    two = _scene(("circle", "red", "left"), ("star", "blue", "right"))  # red left of blue
    assert two.relation == "left of"
    logits = torch.zeros(4, 9, 1 + len(colors))
    red, blue = 1 + colors.index("red"), 1 + colors.index("blue")
    logits[0, 0, red] = 5  # one object, right cell
    logits[1, 3, red], logits[1, 5, blue] = 5, 5  # red in a left cell, blue in a right one: relation right
    logits[2, 5, red], logits[2, 3, blue] = 5, 5  # swapped: wrong
    logits[3, 4, red], logits[3, 4, blue] = 5, 5  # both in the centre: no relation drawn, wrong
    res = ldp.scores(logits, [one, two, two, two], colors)
    assert res == {"position": 1.0, "relation": round(1 / 3, 4), "n_position": 1, "n_relation": 3}
    logits[0, 0, red], logits[0, 8, red] = 0, 5  # the one object drawn bottom right
    assert ldp.scores(logits, [one], colors)["position"] == 0.0


def test_layout_decoder_ignores_padding_words():
    torch.manual_seed(0)
    dec = ldp.build_decoder(16, 5).eval()
    words, mask = torch.randn(2, 4, 16), torch.ones(2, 4, dtype=torch.bool)
    padded = torch.cat([words, torch.randn(2, 3, 16) * 100], 1)
    pmask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], 1)
    out = dec(words, mask)
    assert out.shape == (2, 9, 5) and torch.allclose(out, dec(padded, pmask), atol=1e-5)
    y = ldp.targets([_scene(("circle", "red", "centre"), ("star", "blue", "bottom"))], list(S.COLORS))
    assert y[0].tolist() == [0, 0, 0, 0, 1 + list(S.COLORS).index("red"), 0, 0, 1 + list(S.COLORS).index("blue"), 0]
