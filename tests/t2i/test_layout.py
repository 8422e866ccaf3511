"""Text -> layout -> image for the diffusion UNet (`model.layout_channels`): the LayoutNet's painted map, its loss,
its boxes, the UNet that reads the map through extra input channels, and guidance's empty layout."""

import pytest
import torch
import torch.nn.functional as F

from t2i.models.diffusion import (
    DiffusionConfig,
    LayoutNet,
    build_noise_scheduler,
    build_pipeline,
    build_unet,
    diffusion_loss,
)


def test_paint_matches_a_naive_loop():
    torch.manual_seed(0)
    net = LayoutNet(dim=6, channels=3, width=8, layers=1)
    B, T_, h, w = 2, 4, 4, 4
    words = torch.randn(B, T_, 6)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 1.0, 1.0], [0, 0, 1, 1], [0.1, 0.1, 0.2, 0.3]]] * B)
    weight = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.5]])
    got = net.paint(words, boxes, weight, h, w)
    ref = torch.zeros(B, 3, h, w)
    for b in range(B):
        for t in range(T_):
            x0, y0, x1, y1 = boxes[b, t].tolist()
            f = net.proj(words[b, t])
            for i in range(h):
                for j in range(w):
                    oy = max(0.0, min(y1, (i + 1) / h) - max(y0, i / h)) * h
                    ox = max(0.0, min(x1, (j + 1) / w) - max(x0, j / w)) * w
                    ref[b, :, i, j] += weight[b, t] * oy * ox * f
    assert torch.allclose(got, ref, atol=1e-5)


def test_predict_gives_ordered_boxes_and_masks_padding():
    torch.manual_seed(0)
    net = LayoutNet(dim=6, channels=3, width=8, layers=2)
    words, mask = torch.randn(3, 5, 6), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()
    logit, boxes = net.predict(words, mask)
    assert logit.shape == (3, 5) and boxes.shape == (3, 5, 4)
    assert bool((boxes[..., 0] <= boxes[..., 2]).all() and (boxes[..., 1] <= boxes[..., 3]).all())
    assert bool((boxes >= 0).all() and (boxes <= 1).all())
    assert bool((logit[~mask] < -10).all())  # padding never counts as an object word
    with pytest.raises(ValueError, match="more than its 64 positions"):
        net.predict(torch.randn(1, 65, 6), torch.ones(1, 65, dtype=torch.bool))


def test_loss_is_bce_over_real_tokens_plus_l1_over_grounded_ones():
    torch.manual_seed(0)
    net = LayoutNet(dim=6, channels=3, width=8, layers=1)
    words, mask = torch.randn(2, 4, 6), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    boxes, valid = torch.rand(2, 4, 4), torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]]).bool()
    logit, pred = net.predict(words, mask)
    bce = F.binary_cross_entropy_with_logits(logit[mask], valid[mask].float())
    l1 = sum((pred[b, t] - boxes[b, t]).abs().mean() for b in range(2) for t in range(4) if valid[b, t]) / 3
    assert torch.allclose(net.loss(words, mask, boxes, valid), bce + l1, atol=1e-6)
    # Nothing grounded (an empty caption): BCE alone, not NaN.
    none = torch.zeros_like(valid)
    assert torch.isfinite(net.loss(words, mask, boxes, none))


def test_the_predictor_learns_a_layout():
    """A toy grammar the layout net must read word order from: token 1 names object 0, token 3 object 1, token 2
    says which of them is on the left; the boxes follow."""
    torch.manual_seed(0)
    net = LayoutNet(dim=8, channels=2, width=32, layers=2)
    opt = torch.optim.AdamW(net.parameters(), 3e-3)
    emb = torch.randn(4, 8)  # filler, object, "left of", "right of"
    left, right = torch.tensor([0.0, 0.3, 0.3, 0.7]), torch.tensor([0.7, 0.3, 1.0, 0.7])

    def batch(n):
        rel = torch.randint(0, 2, (n,))
        ids = torch.stack([torch.zeros(n), torch.ones(n), 2 + rel.float(), torch.ones(n)], 1).long()
        words = emb[ids] + 0.05 * torch.randn(n, 4, 8)
        boxes = torch.zeros(n, 4, 4)
        boxes[:, 1] = torch.where(rel[:, None] == 0, left, right)
        boxes[:, 3] = torch.where(rel[:, None] == 0, right, left)
        valid = torch.tensor([False, True, False, True]).expand(n, 4)
        return words, torch.ones(n, 4, dtype=torch.bool), boxes, valid

    for _ in range(300):
        w, m, b, v = batch(64)
        opt.zero_grad()
        net.loss(w, m, b, v).backward()
        opt.step()
    w, m, b, v = batch(200)
    logit, pred = net.predict(w, m)
    assert bool(((logit > 0) == v).all())
    first_left = pred[:, 1, 0] < pred[:, 3, 0]
    assert float((first_left == (b[:, 1, 0] < b[:, 3, 0])).float().mean()) > 0.95


def test_unet_reads_the_map_and_guidance_gets_an_empty_one():
    cfg = DiffusionConfig(resolution=8, in_channels=3, block_out_channels=(8, 16), norm_num_groups=4,
                          attention_head_dim=4, cross_attention_dim=6, layout_channels=2, sample_steps=2)  # fmt: skip
    torch.manual_seed(0)
    unet = build_unet(cfg)
    assert unet.config.in_channels == 5 and unet.config.out_channels == 3
    x0, words, mask = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 6), torch.ones(2, 4, dtype=torch.bool)
    sched = build_noise_scheduler(cfg)
    layout = torch.randn(2, 2, 8, 8)
    a = diffusion_loss(unet, sched, x0, words, mask, torch.Generator().manual_seed(1), layout=layout)
    b = diffusion_loss(unet, sched, x0, words, mask, torch.Generator().manual_seed(1), layout=layout * 0)
    assert not torch.allclose(a, b)  # the map reaches the prediction
    # In the sampler: the conditional half gets the map, the guidance half zeros.
    pipe = build_pipeline(cfg, unet=unet, layout_net=LayoutNet(6, 2, 8, 1))
    pipe.set_progress_bar_config(disable=True)
    seen = []
    forward = unet.forward

    def spy(x, *args, **kw):
        seen.append(x[:, 3:].clone())
        return forward(x, *args, **kw)

    unet.forward = spy
    x = torch.randn(2, 3, 8, 8)
    lay = torch.ones(2, 2, 8, 8)
    pipe._sample(x, words, mask, (words * 0, mask), 2, 3.0, None, lay)
    assert all(torch.equal(s[:2], torch.zeros(2, 2, 8, 8)) and torch.equal(s[2:], lay) for s in seen)


def test_a_given_layout_replaces_the_predicted_one_and_bad_ones_are_refused():
    from t2i.text import TextFeatures

    cfg = DiffusionConfig(resolution=8, in_channels=3, block_out_channels=(8, 16), norm_num_groups=4,
                          attention_head_dim=4, cross_attention_dim=6, layout_channels=2, sample_steps=2)  # fmt: skip
    torch.manual_seed(0)
    net = LayoutNet(6, 2, 8, 1)
    pipe = build_pipeline(cfg, unet=build_unet(cfg), layout_net=net)
    pipe.set_progress_bar_config(disable=True)
    f = TextFeatures(torch.randn(2, 4, 6), torch.ones(2, 4, dtype=torch.bool), torch.randn(2, 6))
    kw = dict(text_features=f, guidance_scale=1.0, num_inference_steps=2)
    own = pipe(["a", "b"], 2, **kw)
    predicted = pipe.predict_layout(f.words, f.mask)
    assert torch.allclose(pipe(["a", "b"], 2, layout=predicted, **kw), own)  # one map per caption, repeated
    same = pipe(["a", "b"], 1, layout=predicted, **kw)
    assert torch.allclose(same, pipe(["a", "b"], 1, **kw))  # the map it would have inferred: the same images
    other = pipe(["a", "b"], 1, layout=predicted + 5, **kw)
    assert not torch.allclose(other, same)  # a different layout draws something else
    with pytest.raises(ValueError, match=r"layout of shape \(2, 3, 8, 8\); this pipeline needs \(2, 2, 8, 8\)"):
        pipe(["a", "b"], 1, layout=torch.zeros(2, 3, 8, 8), **kw)
    plain = build_pipeline(DiffusionConfig(resolution=8, in_channels=3, block_out_channels=(8, 16), norm_num_groups=4,
                                           attention_head_dim=4, cross_attention_dim=6), unet=None)  # fmt: skip
    plain.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="no layout net"):
        plain(["a", "b"], 1, layout=predicted, **kw)


def test_a_contextual_net_paints_its_state_through_a_projection_that_starts_at_zero():
    torch.manual_seed(0)
    plain = LayoutNet(dim=6, channels=3, width=8, layers=1)
    ctx = LayoutNet(dim=6, channels=3, width=8, layers=1, contextual=True)
    ctx.load_state_dict(plain.state_dict(), strict=False)  # what init_from does with a bundle from before hproj
    words, mask = torch.randn(2, 4, 6), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    boxes, weight = torch.rand(2, 4, 4).sort(-1).values, torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1]])
    assert torch.allclose(ctx.paint(words, boxes, weight, 4, 4, mask=mask), plain.paint(words, boxes, weight, 4, 4))
    assert torch.allclose(ctx.layout(words, mask, 4, 4), plain.layout(words, mask, 4, 4))
    torch.nn.init.normal_(ctx.hproj.weight)
    _, _, state = ctx.predict_with_state(words, mask)
    # the naive reference: paint the sum of the two projections as if it were one word feature
    ref = LayoutNet(dim=6 + 8, channels=3, width=8, layers=1)
    with torch.no_grad():
        ref.proj.weight.copy_(torch.cat([ctx.proj.weight, ctx.hproj.weight], 1))
        ref.proj.bias.copy_(ctx.proj.bias + ctx.hproj.bias)
    want = ref.paint(torch.cat([words, state], -1), boxes, weight, 4, 4)
    assert torch.allclose(ctx.paint(words, boxes, weight, 4, 4, state=state), want, atol=1e-5)
    assert torch.allclose(ctx.paint(words, boxes, weight, 4, 4, mask=mask), want, atol=1e-5)
    assert not torch.allclose(want, plain.paint(words, boxes, weight, 4, 4))
    with pytest.raises(ValueError, match="paints its hidden state"):
        ctx.paint(words, boxes, weight, 4, 4)


def test_layout_options_are_checked():
    with pytest.raises(ValueError, match="need the layout stage"):
        DiffusionConfig(layout_contextual=True)
    with pytest.raises(ValueError, match=r"layout_text_dropout must be in \[0, 1\)"):
        DiffusionConfig(layout_channels=4, layout_text_dropout=1.0)


def test_map_only_rows_read_the_empty_caption_and_keep_the_rest(text_encoder):
    from types import SimpleNamespace

    from t2i.train_baselines import DiffusionFamily

    caps = ["a red circle left of a blue square", "", "a big green star", "a small red square above a red circle"]
    f = text_encoder.encode(caps)
    fake = SimpleNamespace(t=SimpleNamespace(seed=0), acc=SimpleNamespace(process_index=0),
                           _features=text_encoder.encode)  # fmt: skip
    null = text_encoder.encode([""])
    n = null.words.shape[1]
    hit = set()
    for step in range(12):
        g = DiffusionFamily._map_only(fake, f, caps, step, 0.6)
        assert g.words.shape == f.words.shape and g.mask.shape == f.mask.shape
        for i in range(len(caps)):
            if torch.equal(g.words[i], f.words[i]) and torch.equal(g.mask[i], f.mask[i]):
                continue
            assert caps[i], "a dropped caption is already the empty one"
            assert torch.equal(g.words[i, :n], null.words[0]) and not bool(g.words[i, n:].any())
            assert int(g.mask[i].sum()) == int(null.mask[0].sum())
            assert torch.equal(g.sentence[i], null.sentence[0])
            hit.add(i)
        assert torch.equal(DiffusionFamily._map_only(fake, f, caps, step, 0.6).words, g.words)  # seeded by the step
    assert hit == {0, 2, 3}  # over a dozen steps every captioned row is sometimes map-only, the rest never
