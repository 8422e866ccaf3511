"""benchmarks/relation_breakdown.py, attention_binding.py, relation_flip.py, layout_oracle.py and layout_fid.py: the
two-object diagnostics."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import attention_binding, layout_fid, layout_oracle, relation_breakdown, relation_flip  # noqa: E402


def _need_evaluator():
    from t2i.metrics import evaluator_available

    if not evaluator_available():
        pytest.skip("bundled evaluator not present")


class Replay:
    """A 'generator' that hands back the given images in order, whatever the captions."""

    def __init__(self, images):
        self.images, self.done = images, 0

    def __call__(self, captions, num_images_per_caption=1, seed=0):
        x = self.images[self.done : self.done + len(captions)]
        self.done += len(captions)
        return x


class MirroredReal(Replay):
    """A 'generator' that draws every two-object test scene of relation_breakdown mirrored left-right."""

    def __init__(self, n):
        super().__init__(layout_fid.paired_scenes(n)[2][2].flip(-1))


def test_real_scenes_are_right_and_mirrored_ones_reversed_only_on_the_horizontal_axis():
    _need_evaluator()
    real = relation_breakdown.breakdown("real", 40)["groups"]
    assert real["all"]["n"] == 40 and real["all"]["right"] == 1.0
    g = relation_breakdown.breakdown(MirroredReal(40), 40)["groups"]
    h, v = g["axis: horizontal"], g["axis: vertical"]
    assert h["n"] > 5 and v["n"] > 5 and h["n"] + v["n"] == 40
    # Left <-> right swaps every horizontal relation and leaves every vertical one as it was.
    assert h["reversed"] == 1.0 and v["right"] == 1.0
    assert sum(g["all"][k] for k in relation_breakdown.BINS) == pytest.approx(1.0)


def test_two_object_captions_tag_which_object_is_named_first():
    items = relation_breakdown.two_object_captions(30)
    assert len(items) == 30 and all(len(a["objects"]) == 2 for _, a, _ in items)
    assert {t["axis"] for _, _, t in items} == {"horizontal", "vertical"}
    assert {t["first"] for _, _, t in items} >= {"A", "B"}  # templates name either object first


def test_bundled_diffusion_binds_its_words_at_low_noise_and_not_in_neutral_scenes():
    _need_evaluator()
    bundle = ROOT / "checkpoints" / "shapes64" / "diffusion"
    if not (bundle / "model_index.json").exists():
        pytest.skip("diffusion bundle not present")
    seen = attention_binding.binding(str(bundle), [50], num=24)[50]
    neutral = attention_binding.binding(str(bundle), [50], num=24, neutral=True)[50]
    assert seen["tokens"] == neutral["tokens"] > 40  # colour and shape words of both objects
    for r in (seen, neutral):
        assert 0.0 <= r["inside"] <= 1.0 and 0.0 <= r["binding"] <= 1.0
    # Objects that look like their words are found by their looks; identical squares are not (chance is 0.5).
    assert seen["binding"] > neutral["binding"] + 0.1


class CaptionOracle:
    """Draws each relation_breakdown scene's real image for its caption and, for the relation-flipped caption, that
    image mirrored along the relation's axis (the picture the flipped caption asks for); `blind` ignores the text
    and draws the real image for both."""

    def __init__(self, n, blind=False):
        import torch

        self.by_caption, real = {}, MirroredReal(n).images.flip(-1)
        for (cap, _, tags), img in zip(relation_breakdown.two_object_captions(n), real):
            axis = -1 if tags["axis"] == "horizontal" else -2
            self.by_caption[cap] = img
            self.by_caption[relation_flip.flip_caption(cap)] = img if blind else torch.flip(img, (axis,))

    def __call__(self, captions, num_images_per_caption=1, seed=0):
        import torch

        return torch.stack([self.by_caption[c] for c in captions])


def test_flip_caption_inverts_exactly_one_relation_word_and_round_trips():
    caps = [c for c, _, _ in relation_breakdown.two_object_captions(200)]
    for c in caps:
        f = relation_flip.flip_caption(c)
        assert f != c and relation_flip.flip_caption(f) == c
    assert relation_flip.flip_caption("a red circle higher than a blue star") == "a red circle beneath a blue star"
    with pytest.raises(ValueError, match="exactly one relation word"):
        relation_flip.flip_caption("a big red circle at the top")


def test_relation_flip_tells_a_model_that_reads_the_relation_from_one_that_ignores_it():
    _need_evaluator()
    reads = relation_flip.flip_pairs(CaptionOracle(30), 30)
    assert reads["pairs"]["both right"] == 1.0 and reads["right"] == reads["right_flipped"] == 1.0
    assert reads["pixel_l1"] > 0.0 and reads["n_count_right"] == 30 and reads["pairs_count_right"]["both right"] == 1.0
    blind = relation_flip.flip_pairs(CaptionOracle(30, blind=True), 30)
    # Same picture for both captions: right as written, reversed when flipped, every time; nothing moves.
    assert blind["pairs"]["right, flip reversed"] == 1.0 and blind["right_flipped"] == 0.0
    assert blind["pixel_l1"] == 0.0


def test_layout_oracle_scores_a_perfect_and_a_swapped_layout_net(text_encoder):
    """A layout net that answers the scenes' true boxes scores 1 everywhere; one that swaps the two objects' boxes
    still finds every object word but gets no object inside its box and no pair in order."""
    from types import SimpleNamespace

    import torch

    from t2i.models.diffusion import LayoutNet

    items = relation_breakdown.two_object_captions(12)
    caps, attrs = [c for c, _, _ in items], [a for _, a, _ in items]
    net = LayoutNet(text_encoder.encode(["a"]).words.shape[-1], 2, 8, 1)
    unet = SimpleNamespace(config=SimpleNamespace(sample_size=8))
    pipe = SimpleNamespace(text_encoder=text_encoder, layout_net=net, unet=unet)
    boxes, valid, lay = layout_oracle.true_layout(pipe, caps, attrs)
    assert lay.shape == (12, 2, 8, 8) and int(valid.sum()) >= 2 * 12  # words of both objects in every caption
    vq_like = SimpleNamespace(text_encoder=text_encoder, layout_net=net, code_side=4)  # a VQGAN prior's code grid
    assert layout_oracle.true_layout(vq_like, caps, attrs)[2].shape == (12, 2, 4, 4)

    def answer(swap):
        def predict(words, mask):
            b = boxes.clone()
            if swap:  # each grounded token gets the other object's box
                for i in range(len(caps)):
                    toks = valid[i].nonzero().flatten()
                    uniq = {tuple(boxes[i, t].tolist()) for t in toks}
                    assert len(uniq) == 2
                    first, second = (torch.tensor(u) for u in uniq)
                    for t in toks:
                        b[i, t] = second if torch.equal(boxes[i, t], first) else first
            return torch.where(valid, 10.0, -10.0), b

        return predict

    net.predict = answer(False)
    good = layout_oracle.predictor_scores(pipe, caps, attrs)
    assert good == {"recall": 1.0, "precision": 1.0, "box_l1": 0.0, "centre_inside": 1.0, "order_right": 1.0}
    net.predict = answer(True)
    bad = layout_oracle.predictor_scores(pipe, caps, attrs)
    assert bad["recall"] == bad["precision"] == 1.0
    assert bad["centre_inside"] == 0.0 and bad["order_right"] == 0.0 and bad["box_l1"] > 0.05


def test_layout_fid_is_zero_for_the_scenes_themselves_and_high_for_their_mirror_images():
    _need_evaluator()
    import torch

    scenes = layout_fid.paired_scenes(24)
    assert [len(scenes[n][0]) for n in (1, 2)] == [24, 24]
    assert all(len(a["objects"]) == n for n in (1, 2) for a in scenes[n][1])
    real = torch.cat([scenes[1][2], scenes[2][2]])  # run() draws the one-object scenes first
    same = layout_fid.run([Replay(real)], 24)
    mirrored = layout_fid.run([Replay(real.flip(-1))], 24)
    for g in ("1 object", "2 objects"):
        (name,) = [k for k in same[g] if not k.startswith("real")]
        assert same[g][name] < 1e-6  # the scenes' own images: identical statistics
        (name,) = [k for k in mirrored[g] if not k.startswith("real")]
        assert mirrored[g][name] > 50  # mirrored: objects on the wrong side (24 scenes: ~230 here)
