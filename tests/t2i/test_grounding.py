"""Token-level grounding of the diffusion UNet's cross-attention (TokenCompose's token loss, `model.grounding_weight`):
which words name which Shapes object, where that object is, the recorded attention maps and the loss itself."""

from pathlib import Path

import numpy as np
import pytest
import torch

import t2i.train as T
from t2i.data.shapes import (
    BACKGROUNDS,
    Scene,
    ShapeObject,
    ShapesConfig,
    make_sample,
    object_box,
    object_mentions,
    render_scene,
)
from t2i.models.diffusion import (
    DiffusionConfig,
    box_masks,
    build_unet,
    grounding_loss,
    grounding_targets,
    install_recorder,
)

ROOT = Path(__file__).resolve().parents[2]


def _words(caption, spans):
    return [[caption[a:b] for a, b in s] for s in spans]


def test_mentions_name_each_object_and_drop_ambiguous_words():
    attrs = Scene("black", (ShapeObject("circle", "red", "small", "top left"),
                            ShapeObject("heart", "orange", "large", "bottom"))).attributes()  # fmt: skip
    cap = "a big orange heart shape below a small red disc"
    assert _words(cap, object_mentions(cap, attrs)) == [["red", "disc"], ["orange", "heart"]]
    # Both red: "red" could be either object, so neither gets it; the shape words still tell them apart.
    same = Scene("black", (ShapeObject("circle", "red", "small", "top left"),
                           ShapeObject("cross", "red", "large", "bottom"))).attributes()  # fmt: skip
    cap = "a small red circle above a big red plus sign"
    assert _words(cap, object_mentions(cap, same)) == [["circle"], ["plus"]]
    assert object_mentions("", attrs) == [[], []]  # a dropped caption (classifier-free guidance)
    assert object_mentions("a photo of a dog", None) == []  # not a Shapes example


def test_every_training_caption_grounds_the_words_it_uses():
    """Over real captions: each object with a colour or shape of its own is named by at least one span, and every
    span's text is one of its words."""
    cfg = ShapesConfig(size=32)
    named = 0
    for i in range(40):
        s = make_sample(cfg, "train", i)
        objs = s.attributes["objects"]
        for cap in s.captions:
            spans = object_mentions(cap, s.attributes)
            assert len(spans) == len(objs)
            for o, obj_spans in zip(objs, spans):
                others = [p for p in objs if p is not o]
                if all(p["color"] != o["color"] and p["shape"] != o["shape"] for p in others):
                    assert obj_spans, (cap, o)
                named += len(obj_spans)
    assert named > 200


def test_object_box_holds_the_rendered_object_at_any_jitter():
    rng = np.random.default_rng(0)
    for shape in ("circle", "square", "star", "cross"):
        for size in ("small", "large"):
            for pos in ("top left", "centre", "bottom right", "right"):
                scene = Scene("black", (ShapeObject(shape, "white", size, pos),))
                img = np.asarray(render_scene(scene, 96, rng)).astype(int)
                ys, xs = np.nonzero(np.abs(img - np.array(BACKGROUNDS["black"])).sum(-1) > 60)
                x0, y0, x1, y1 = object_box(scene.attributes()["objects"][0])
                assert xs.min() >= x0 * 96 - 1 and xs.max() <= x1 * 96 and ys.min() >= y0 * 96 - 1
                assert ys.max() <= y1 * 96
                # and it is tight: the box is at most ~1.5x the drawn object's extent
                assert (x1 - x0) * 96 <= 1.5 * (xs.max() - xs.min() + 1) + 2


def test_box_masks_equal_a_supersampled_reference():
    boxes = torch.tensor([[0.1, 0.2, 0.45, 0.9], [0.0, 0.0, 1.0, 1.0], [0.6, 0.6, 0.62, 0.8]])
    for h, w in ((4, 4), (8, 8), (3, 6)):
        got = box_masks(boxes, h, w).view(3, h, w)
        n = 600  # points per side
        c = (torch.arange(n) + 0.5) / n
        for b, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            inside = ((c >= y0) & (c < y1)).float()[:, None] * ((c >= x0) & (c < x1)).float()[None, :]
            ref = inside.view(h, n // h, w, n // w).mean((1, 3))
            assert torch.allclose(got[b], ref, atol=0.01)


def test_grounding_loss_matches_a_naive_loop():
    torch.manual_seed(0)
    B, H, T_ = 3, 2, 6
    maps = [torch.softmax(torch.randn(B, H, 16, T_), -1), torch.softmax(torch.randn(B, H, 64, T_), -1)]
    boxes = torch.rand(B, T_, 4).sort(-1).values[..., [0, 1, 2, 3]]
    boxes = torch.stack([boxes[..., 0], boxes[..., 1], boxes[..., 2] * 0 + 0.9, boxes[..., 3] * 0 + 0.95], -1)
    valid = torch.rand(B, T_) > 0.4
    got = grounding_loss(maps, boxes, valid, 16, 16)
    per_layer = []
    for p in maps:
        side = int(p.shape[2] ** 0.5)
        terms = []
        for b in range(B):
            for t in range(T_):
                if not valid[b, t]:
                    continue
                a = p[b, :, :, t].mean(0)
                a = a / a.sum()
                x0, y0, x1, y1 = boxes[b, t].tolist()
                m = torch.zeros(side, side)
                for i in range(side):
                    for j in range(side):
                        oy = max(0.0, min(y1, (i + 1) / side) - max(y0, i / side)) * side
                        ox = max(0.0, min(x1, (j + 1) / side) - max(x0, j / side)) * side
                        m[i, j] = oy * ox
                terms.append((1 - (a * m.flatten()).sum()) ** 2)
        per_layer.append(torch.stack(terms).mean())
    assert torch.allclose(got, torch.stack(per_layer).mean(), atol=1e-5)
    # All the attention inside the box: no loss; nothing grounded: zero, not NaN.
    inside = torch.zeros(1, 1, 16, 2)
    inside[0, 0, 5, 0] = 1.0  # cell (1, 1) of 4x4
    inside[0, 0, :, 1] = 1.0 / 16
    box = torch.tensor([[[0.25, 0.25, 0.5, 0.5], [0, 0, 1, 1]]])
    assert grounding_loss([inside], box, torch.tensor([[True, True]]), 8, 8).item() == pytest.approx(0.0, abs=1e-6)
    assert grounding_loss([inside], box, torch.zeros(1, 2, dtype=torch.bool), 8, 8).item() == 0.0


def test_recorder_changes_nothing_and_records_cross_attention():
    torch.manual_seed(0)
    cfg = DiffusionConfig(resolution=8, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4)
    unet = build_unet(cfg).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 500])
    words, mask = torch.randn(2, 5, 384), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=words, encoder_attention_mask=mask).sample
    rec = install_recorder(unet)
    with torch.no_grad():
        same = unet(x, t, encoder_hidden_states=words, encoder_attention_mask=mask).sample
        assert torch.allclose(ref, same, atol=1e-5) and not rec.maps  # inactive: nothing kept
        rec.active = True
        unet(x, t, encoder_hidden_states=words, encoder_attention_mask=mask)
    n_cross = sum(k.endswith("attn2.processor") for k in unet.attn_processors)
    assert len(rec.maps) == n_cross > 0
    for p in rec.maps:
        assert p.shape[0] == 2 and p.shape[-1] == 5 and p.shape[2] in (16,)  # 4x4: the cross-attention level
        assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-5)
        assert p[0, :, :, 3:].abs().max() < 1e-6  # padding gets no attention


def test_targets_point_at_the_tokens_of_each_objects_words(text_encoder):
    s = make_sample(ShapesConfig(size=32), "train", 0)
    caps = [s.captions[0], ""]
    feats = text_encoder.encode(caps)
    cache: dict = {}
    boxes, valid = grounding_targets(text_encoder.tokenizer, caps, [s.attributes] * 2, feats.words.shape[1],
                                     text_encoder.max_length, cache)  # fmt: skip
    assert not valid[1].any()  # the dropped caption
    ids = text_encoder.tokenizer(caps[0], truncation=True, max_length=text_encoder.max_length)["input_ids"]
    spans = object_mentions(caps[0], s.attributes)
    for o, obj in enumerate(s.attributes["objects"]):
        want = torch.tensor(object_box(obj))
        toks = [t for t in range(len(ids)) if valid[0, t] and torch.equal(boxes[0, t], want)]
        got = text_encoder.tokenizer.decode([ids[t] for t in toks]).replace(" ", "")
        assert got == "".join(caps[0][a:b] for a, b in sorted(spans[o])).replace(" ", "")
    again = grounding_targets(text_encoder.tokenizer, caps, [s.attributes] * 2, feats.words.shape[1],
                              text_encoder.max_length, cache)  # fmt: skip
    assert torch.equal(again[0], boxes) and torch.equal(again[1], valid)


DATA = ["data.size=16", "data.length=16", "train.batch_size=4", "train.checkpoint_every=2", "train.sample_every=2",
        "train.eval_every=0", "train.export_dtype=float32", "train.num_threads=0", "model.autoencoder=null",
        "model.resolution=16", "model.in_channels=3", "model.block_out_channels=[8,16]", "model.norm_num_groups=4",
        "model.attention_head_dim=4", "model.sample_steps=2"]  # fmt: skip


def test_training_with_grounding_logs_it_pulls_attention_and_exports(tmp_path, text_encoder):
    from t2i.pipelines import load_pipeline

    recipe = T.load_recipe(ROOT / "configs/t2i/shapes_diffusion.yaml", DATA + ["model.grounding_weight=1"])
    run = T.train(recipe, max_steps=2, runs_dir=tmp_path / "runs", progress=False, text_encoder=text_encoder)
    assert '"grounding"' in (run / "train.log").read_text()
    pipe = load_pipeline(run / "export")  # the export samples with diffusers' own processors
    assert not any(type(p).__name__ == "CrossAttentionRecorder" for p in pipe.unet.attn_processors.values())

    # The term's gradient reaches the cross-attention's keys and moves the maps towards the boxes.
    torch.manual_seed(0)
    cfg = DiffusionConfig(resolution=16, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4)
    unet = build_unet(cfg)
    rec = install_recorder(unet)
    s = make_sample(ShapesConfig(size=16), "train", 3)
    feats = text_encoder.encode(s.captions)
    boxes, valid = grounding_targets(text_encoder.tokenizer, s.captions, [s.attributes] * 5, feats.words.shape[1],
                                     text_encoder.max_length)  # fmt: skip
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    x, t = torch.randn(5, 3, 16, 16), torch.full((5,), 300)
    losses = []
    for _ in range(30):
        rec.maps.clear()
        rec.active = True
        unet(x, t, encoder_hidden_states=feats.words, encoder_attention_mask=feats.mask)
        rec.active = False
        loss = grounding_loss(rec.maps, boxes, valid, 16, 16)
        opt.zero_grad()
        loss.backward()
        if not losses:
            k = [m for n, m in unet.named_modules() if n.endswith("attn2")][0].to_k.weight
            assert k.grad is not None and k.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_grounding_weight_is_refused():
    with pytest.raises(ValueError, match="grounding_weight"):
        DiffusionConfig(grounding_weight=-1)
