import pytest
import torch

from t2i.data.dataset import pil_to_tensor
from t2i.data.shapes import ShapesConfig, make_sample
from t2i.models.vqgan import (
    CodePrior,
    CodeUsage,
    PatchDiscriminator,
    VQGANConfig,
    VQGANPipeline,
    adaptive_weight,
    autoencoder_losses,
    build_vqmodel,
    discriminator_hinge_loss,
    filter_logits,
    init_codebook,
    sample_codes,
    vq_decode_indices,
    vq_encode,
)


def tiny_cfg(**kw):
    base = dict(resolution=16, block_out_channels=(16, 32), latent_channels=8, num_codes=32, norm_num_groups=8,
                disc_channels=8, disc_layers=2, disc_start=0, mid_attention=False)  # fmt: skip
    base.update(kw)
    return VQGANConfig(**base)


def shapes_batch(n=4, size=16):
    return torch.stack([pil_to_tensor(make_sample(ShapesConfig(size=size), "train", i).image) for i in range(n)])


def test_decode_from_indices_equals_decode_of_quantized():
    torch.manual_seed(0)
    model = build_vqmodel(tiny_cfg()).eval()
    q = vq_encode(model, shapes_batch())
    assert q.indices.shape == (4, 8, 8) and q.quant.shape == (4, 8, 8, 8)[:1] + (8, 8, 8)
    a = model.decode(q.quant, force_not_quantize=True).sample
    b = vq_decode_indices(model, q.indices)
    assert torch.allclose(a, b, atol=1e-5)
    assert 1.0 <= q.perplexity.item() <= 32.0


def test_vq_round_trip_reconstructs_after_training():
    torch.manual_seed(0)
    cfg = tiny_cfg(disc_start=10_000, perceptual_weight=0.0)
    model = build_vqmodel(cfg)
    x = shapes_batch(8)
    init_codebook(model, x)  # without a data-dependent init the codebook collapses (see init_codebook)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    usage = CodeUsage(cfg.num_codes, revive_after=10)
    first = None
    for step in range(60):
        loss, logs, _, q = autoencoder_losses(model, None, x, cfg, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        usage.update(model, q, step)
        first = first if first is not None else logs["rec_l1"]
    model.eval()
    with torch.no_grad():
        rec = vq_decode_indices(model, vq_encode(model, x).indices)
    err = (rec - x).abs().mean().item()
    assert err < 0.5 * first, (first, err)


def test_adaptive_weight_matches_hand_computation():
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
    a, b = torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    nll = (w * a).sum() + (w**2).sum()  # d/dw = a + 2w
    g = (w * b).sum()  # d/dw = b
    lam = adaptive_weight(nll, g, w, scale=0.8)
    expected = torch.norm(a + 2 * w.detach()) / (torch.norm(b) + 1e-4) * 0.8
    assert torch.allclose(lam, expected)


def test_discriminator_and_gan_terms_run_backward():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model, disc = build_vqmodel(cfg), PatchDiscriminator(cfg.disc_channels, cfg.disc_layers)
    x = shapes_batch()
    loss, logs, xrec, _ = autoencoder_losses(
        model, disc, x, cfg, step=0, perceptual=lambda a, b: (a - b).pow(2).mean()
    )
    assert {"g_loss", "adaptive_weight", "perceptual"} <= set(logs)
    loss.backward()
    assert model.decoder.conv_out.weight.grad is not None
    d = discriminator_hinge_loss(disc, x, xrec)
    d.backward()
    assert torch.isfinite(d) and any(p.grad is not None for p in disc.parameters())


def test_dead_codes_are_revived():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_vqmodel(cfg)
    q = vq_encode(model, shapes_batch(2))
    usage = CodeUsage(cfg.num_codes, revive_after=1)
    before = model.quantize.embedding.weight.detach().clone()
    logs = usage.update(model, q, step=5)
    n_dead = cfg.num_codes - len(torch.unique(q.indices))
    assert logs["revived_codes"] == n_dead > 0
    changed = (model.quantize.embedding.weight != before).any(1).sum().item()
    assert changed == n_dead


def naive_filter(logits, temperature, top_k, top_p):
    out = []
    for row in logits / temperature:
        keep = torch.ones_like(row, dtype=torch.bool)
        if top_k:
            keep &= row >= torch.sort(row, descending=True).values[top_k - 1]
        order = torch.argsort(row.masked_fill(~keep, float("-inf")), descending=True)
        probs = row.masked_fill(~keep, float("-inf")).softmax(-1)
        mass, kept = 0.0, torch.zeros_like(keep)
        for i in order.tolist():
            if mass >= top_p:
                break
            kept[i] = keep[i]
            mass += probs[i].item()
        out.append(row.masked_fill(~kept, float("-inf")))
    return torch.stack(out)


@pytest.mark.parametrize("k,p", [(0, 0.9), (5, 1.0), (5, 0.5), (0, 1.0)])
def test_filter_logits_matches_naive(k, p):
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(k))
    assert torch.equal(filter_logits(logits, 0.7, k, p).isinf(), naive_filter(logits, 0.7, k, p).isinf())


@pytest.fixture
def tiny_pipe(text_encoder):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    prior = CodePrior(num_codes=cfg.num_codes, seq_len=cfg.code_size**2, text_dim=384, n_embd=32, n_layer=1, n_head=2)
    pipe = VQGANPipeline(build_vqmodel(cfg), prior)
    pipe.set_text_encoder(text_encoder)
    return pipe


def test_prior_guidance_one_equals_conditional(tiny_pipe, text_encoder):
    f, null = text_encoder.encode(["a red circle"]), text_encoder.encode([""])
    a = sample_codes(tiny_pipe.prior, f.words, f.mask, None, generator=torch.Generator().manual_seed(0))
    b = sample_codes(tiny_pipe.prior, f.words, f.mask, null, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    c = sample_codes(tiny_pipe.prior, f.words, f.mask, null, 4.0, top_k=3, generator=torch.Generator().manual_seed(0))
    assert c.shape == (1, 64) and c.max() < 32


def test_prior_loss_trains_and_pipeline_round_trip(tiny_pipe, tmp_path, text_encoder):
    x = shapes_batch(2)
    f = text_encoder.encode(["a red circle", "a blue star"])
    idx = vq_encode(tiny_pipe.vqmodel, x).indices
    prior = tiny_pipe.prior.train()
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    losses = []
    for _ in range(2):
        loss = prior.loss(idx, f.words, f.mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    prior.eval()
    before = tiny_pipe(["a red circle"], num_images_per_caption=2, seed=7)
    assert before.shape == (2, 3, 16, 16)
    tiny_pipe.save_pretrained(tmp_path / "vq")
    loaded = VQGANPipeline.from_pretrained(tmp_path / "vq")
    loaded.set_text_encoder(text_encoder)
    assert torch.equal(loaded(["a red circle"], num_images_per_caption=2, seed=7), before)


def test_pipeline_sampling_defaults_round_trip(tmp_path):
    """Saved sampling settings are what a bare call uses after reloading; unknown keys are refused by name."""
    from t2i.models.vqgan import VQGANConfig

    cfg = VQGANConfig(resolution=16, block_out_channels=(8, 8), latent_channels=4, num_codes=16, norm_num_groups=4,
                      mid_attention=False)  # fmt: skip
    prior = CodePrior(num_codes=16, seq_len=64, n_embd=16, n_layer=1, n_head=2)
    pipe = VQGANPipeline(build_vqmodel(cfg), prior, sampling={"guidance_scale": 2.0, "top_k": 5})
    pipe.save_pretrained(tmp_path / "p")
    again = VQGANPipeline.from_pretrained(tmp_path / "p")
    assert again.sampling == {"guidance_scale": 2.0, "temperature": 1.0, "top_k": 5, "top_p": 1.0}
    with pytest.raises(ValueError, match="unknown sampling settings.*'topk'"):
        VQGANPipeline(build_vqmodel(cfg), prior, sampling={"topk": 5})


def test_pipeline_text_layer_round_trip(tmp_path):
    import json

    cfg = VQGANConfig(resolution=16, block_out_channels=(8, 8), latent_channels=4, num_codes=16, norm_num_groups=4,
                      mid_attention=False)  # fmt: skip
    prior = CodePrior(num_codes=16, seq_len=64, n_embd=16, n_layer=1, n_head=2)
    VQGANPipeline(build_vqmodel(cfg), prior, text_layer=3).save_pretrained(tmp_path / "p")
    assert VQGANPipeline.from_pretrained(tmp_path / "p").text_layer == 3
    meta = json.loads((tmp_path / "p/pipeline.json").read_text())
    del meta["text_layer"]  # a bundle saved before the option
    (tmp_path / "p/pipeline.json").write_text(json.dumps(meta))
    assert VQGANPipeline.from_pretrained(tmp_path / "p").text_layer == -1


def _layout_prior(cfg, channels=4, attention=False, n_layer=1):
    torch.manual_seed(1)
    prior = CodePrior(num_codes=cfg.num_codes, seq_len=cfg.code_size**2, text_dim=384, n_embd=32, n_layer=n_layer,
                      n_head=2, layout_channels=channels, layout_attention=attention).eval()  # fmt: skip
    # a prior that reads its map (what reads it starts at zero)
    torch.nn.init.normal_(prior.layout_proj.weight, std=0 if attention else 1.0)
    for a in prior.layout_attn or ():
        torch.nn.init.normal_(a.out.weight, std=1.0)
    return prior


@pytest.mark.parametrize("attention", [False, True], ids=["cell", "attention"])
def test_layout_prior_cached_sampling_reads_the_cell_it_predicts(text_encoder, attention):
    """The KV-cached sampler adds layout cell t to the input that predicts code t, as the full-sequence forward of
    training does: greedy codes sampled with a map are the argmax of one forward over them with the same map. With
    layout attention alone (the cell projection at zero) as well: the cached sampler reads the whole map."""
    cfg = tiny_cfg()
    prior = _layout_prior(cfg, attention=attention, n_layer=2 if attention else 1)
    side = cfg.code_size
    f = text_encoder.encode(["a red circle", "a blue star"])
    lay = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(3)) * 3
    codes = sample_codes(prior, f.words, f.mask, top_k=1, generator=torch.Generator().manual_seed(0), layout=lay)
    bos = torch.full((2, 1), prior.bos, dtype=torch.long)
    with torch.no_grad():
        logits = prior(torch.cat([bos, codes[:, :-1]], 1), f.words, f.mask, layout=lay).logits[..., : prior.bos]
    assert torch.equal(logits.argmax(-1), codes)
    other = sample_codes(prior, f.words, f.mask, top_k=1, generator=torch.Generator().manual_seed(0), layout=-lay)
    assert not torch.equal(codes, other)  # the map is read
    with pytest.raises(ValueError, match="layout of shape"):
        prior(torch.cat([bos, codes[:, :-1]], 1), f.words, f.mask, layout=lay[:, :3])
    plain = CodePrior(num_codes=cfg.num_codes, seq_len=side**2, text_dim=384, n_embd=32, n_layer=1, n_head=2)
    with pytest.raises(ValueError, match="reads no layout map"):
        plain(torch.cat([bos, codes[:, :-1]], 1), f.words, f.mask, layout=lay)


@pytest.mark.parametrize("attention", [False, True], ids=["cell", "attention"])
def test_layout_prior_guidance_branch_gets_an_empty_map(text_encoder, attention):
    """uncond + s * (cond - uncond) with the unconditional branch on the empty caption AND an empty map: scale 0
    samples what the empty caption with a zero map samples, whatever the conditional map says."""
    cfg = tiny_cfg()
    prior = _layout_prior(cfg, attention=attention)
    side = cfg.code_size
    f, null = text_encoder.encode(["a red circle"]), text_encoder.encode([""])
    lay = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(3)) * 3
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    guided0 = sample_codes(prior, f.words, f.mask, null, 0.0, top_k=1, generator=g(), layout=lay)
    empty = sample_codes(prior, null.words, null.mask, top_k=1, generator=g(), layout=torch.zeros_like(lay))
    assert torch.equal(guided0, empty)
    one = sample_codes(prior, f.words, f.mask, null, 1.0, generator=g(), layout=lay)
    assert torch.equal(one, sample_codes(prior, f.words, f.mask, generator=g(), layout=lay))


@pytest.mark.parametrize("attention", [False, True], ids=["cell", "attention"])
def test_layout_pipeline_round_trip_and_errors(tmp_path, text_encoder, attention):
    from t2i.models.diffusion import LayoutNet

    cfg = tiny_cfg()
    prior = _layout_prior(cfg, attention=attention)
    torch.manual_seed(2)
    net = LayoutNet(384, 4, 16, 1, contextual=True)
    pipe = VQGANPipeline(build_vqmodel(cfg), prior, layout_net=net, sampling={"guidance_scale": 2.0})
    pipe.set_text_encoder(text_encoder)
    a = pipe(["a red circle left of a blue star"], 2, seed=3)
    pipe.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p/layout_net/config.json").is_file()
    again = VQGANPipeline.from_pretrained(tmp_path / "p")
    again.set_text_encoder(text_encoder)
    assert torch.equal(a, again(["a red circle left of a blue star"], 2, seed=3))
    # the true layout instead of the predicted one (what benchmarks/layout_oracle.py does), shape checked
    side = cfg.code_size
    enc = text_encoder.encode(["a red circle left of a blue star"])
    mine = pipe.predict_layout(enc.words, enc.mask)
    assert mine.shape == (1, 4, side, side)
    assert torch.equal(a, pipe(["a red circle left of a blue star"], 2, seed=3, layout=mine))
    with pytest.raises(ValueError, match=r"layout of shape \(1, 4, 2, 2\)"):
        pipe(["a red circle"], layout=torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="needs its layout net"):
        VQGANPipeline(build_vqmodel(cfg), prior)
    plain = CodePrior(num_codes=cfg.num_codes, seq_len=side**2, text_dim=384, n_embd=32, n_layer=1, n_head=2)
    with pytest.raises(ValueError, match="needs its layout net"):
        VQGANPipeline(build_vqmodel(cfg), plain, layout_net=net)


def test_layout_attention_starts_as_a_no_op_and_copies_read_their_own_map(text_encoder):
    """Its output projection starts at zero: a prior given layout attention predicts what it did (so init_from a
    trained prior keeps its samples). The branches hang on GPT-2's blocks as forward hooks; a deepcopy (the EMA,
    an export) must read the map through its own copy of them, not the original's."""
    import copy

    from t2i.models.vqgan import LayoutAttention

    cfg = tiny_cfg()
    side = cfg.code_size
    kw = dict(num_codes=cfg.num_codes, seq_len=side**2, text_dim=384, n_embd=32, n_layer=2, n_head=2)
    kw["layout_channels"] = 4
    torch.manual_seed(1)
    cell = CodePrior(**kw).eval()
    torch.nn.init.normal_(cell.layout_proj.weight, std=1.0)
    attn = CodePrior(**kw, layout_attention=True).eval()
    missing, unexpected = attn.load_state_dict(cell.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(CodePrior.new_parameters) for k in missing)
    f = text_encoder.encode(["a red circle left of a blue star"])
    lay = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(3))
    codes = torch.randint(0, cfg.num_codes, (1, side**2), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = lambda p, m: p(codes, f.words, f.mask, layout=m).logits  # noqa: E731
        assert torch.allclose(logits(cell, lay), logits(attn, lay), atol=1e-6)
        for a in attn.layout_attn:
            torch.nn.init.normal_(a.out.weight, std=1.0)
        before = logits(attn, lay)
        twin = copy.deepcopy(attn)
        for a in attn.layout_attn:  # the original's branches off: a copy still hooked to them would change
            torch.nn.init.zeros_(a.out.weight)
        assert torch.allclose(logits(twin, lay), before, atol=1e-5)
        assert not torch.allclose(logits(attn, lay), before, atol=1e-3)
        assert not torch.allclose(logits(twin, -lay), before, atol=1e-3)  # the copy reads the map it is given
    # the branch is attention over the map: a naive per-query softmax gives the same output
    torch.manual_seed(5)
    la = LayoutAttention(8, 2)
    torch.nn.init.normal_(la.out.weight)
    h, ctx = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    q, (k, v) = la.q(la.ln(h)), la.kv(la.ln_ctx(ctx)).chunk(2, -1)
    want = torch.empty_like(h)
    for b in range(2):
        heads = []
        for i in range(2):
            s = slice(4 * i, 4 * i + 4)
            w = (q[b, :, s] @ k[b, :, s].T / 2.0).softmax(-1)
            heads.append(w @ v[b, :, s])
        want[b] = h[b] + la.out(torch.cat(heads, -1))
    assert torch.allclose(la(h, ctx), want, atol=1e-5)
    with pytest.raises(ValueError, match="needs layout_channels"):
        CodePrior(**{**kw, "layout_channels": 0}, layout_attention=True)
