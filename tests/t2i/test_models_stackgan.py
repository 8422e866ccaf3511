"""StackGAN: tiny configs run forward/backward; CA statistics and stage shapes; stage-II freezing."""

import pytest
import torch

from t2i.losses import kl_loss
from t2i.models.stackgan import StackGANConfig, build_stackgan
from t2i.nn import ConditioningAugmentation

TINY = dict(resolution=16, stage1_resolution=8, text_dim=12, z_dim=4, cond_dim=6, ngf=4, ndf=4, res_blocks=1)


@pytest.mark.parametrize("cond_affine", [False, True])
def test_forward_backward_two_stages(cond_affine):
    torch.manual_seed(0)
    G, D = build_stackgan(StackGANConfig(**TINY, cond_affine=cond_affine))
    out = G(torch.randn(3, 4), torch.randn(3, 12))
    assert [tuple(x.shape) for x in out.images] == [(3, 3, 8, 8), (3, 3, 16, 16)]
    assert out.images[-1].abs().max() <= 1
    assert len(D) == 2
    loss = sum(D[i](x, torch.randn(3, 12))[0].mean() for i, x in enumerate(out.images))
    loss = loss + kl_loss(out.mu[0], out.logvar[0])
    loss.backward()
    assert all(p.grad is not None for p in G.parameters() if p.requires_grad)


def test_single_stage_and_validation():
    G, D = build_stackgan(StackGANConfig(**{**TINY, "stage1_resolution": 16}))
    assert G.stage2 is None and len(D) == 1
    with pytest.raises(ValueError, match="powers of two"):
        StackGANConfig(**{**TINY, "resolution": 24})
    with pytest.raises(ValueError, match="train_stage"):
        StackGANConfig(**TINY, train_stage="both")


def test_conditioning_augmentation_reparameterisation():
    ca = ConditioningAugmentation(5, 3)
    s = torch.randn(2, 5)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    c1, mu, logvar = ca(s, g1)
    c2, _, _ = ca(s, g2)
    assert torch.equal(c1, c2)  # the seeded generator fixes the sample
    eps = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(c1, mu + torch.exp(0.5 * logvar) * eps)


def test_ca_noise_scales_the_sample_and_zero_conditions_on_mu(tmp_path):
    ca, half = ConditioningAugmentation(5, 3), ConditioningAugmentation(5, 3, noise=0.5)
    none = ConditioningAugmentation(5, 3, noise=0.0)
    half.load_state_dict(ca.state_dict())
    none.load_state_dict(ca.state_dict())
    s, eps = torch.randn(4, 5), torch.randn(4, 3)
    c, mu, logvar = ca(s, eps=eps)
    assert torch.allclose(half(s, eps=eps)[0], mu + 0.5 * torch.exp(0.5 * logvar) * eps)
    c0, mu0, _ = none(s, torch.Generator().manual_seed(3))
    assert torch.equal(c0, mu0) and torch.equal(mu0, mu)  # deterministic: the seed and eps do not matter
    # Through the model config; the export carries it, so a reloaded pipeline samples as it was trained.
    from t2i.pipelines import export_generator, load_pipeline

    cfg = StackGANConfig(**TINY, ca_noise=0.0)
    G, _ = build_stackgan(cfg)
    assert G.stage1.ca.noise == 0.0 and G.stage2.ca.noise == 0.0
    z, sent = torch.randn(2, 4), torch.randn(2, 12)
    G.eval()
    a = G(z, sent, ca_eps=[torch.randn(2, 6), torch.randn(2, 6)]).images[-1]
    b = G(z, sent, ca_eps=[torch.randn(2, 6), torch.randn(2, 6)]).images[-1]
    assert torch.equal(a, b)
    export_generator(tmp_path / "g", "stackgan", G, cfg)
    assert load_pipeline(tmp_path / "g").generator.stage2.ca.noise == 0.0


def test_sentence_norm_standardises_the_text_feature():
    """With sentence_norm, CA and D see each sentence at zero mean / unit variance: a unit-norm 384-d feature
    (MiniLM's, ~0.05 per dimension) and the same direction at any scale give the same condition."""
    from t2i.nn import StageDiscriminator

    torch.manual_seed(0)
    s = torch.nn.functional.normalize(torch.randn(4, 384), dim=1)
    ca, raw = ConditioningAugmentation(384, 8, sentence_norm=True), ConditioningAugmentation(384, 8)
    raw.load_state_dict(ca.state_dict())  # no parameters of its own: old checkpoints load either way
    eps = torch.randn(4, 8)
    assert torch.allclose(ca(s, eps=eps)[1], ca(20 * s, eps=eps)[1], atol=2e-3)  # up to LayerNorm eps
    mu_std = lambda m, x: m(x, eps=eps)[1].std().item()  # noqa: E731
    assert mu_std(ca, s) > 5 * mu_std(raw, s)  # the raw unit-norm feature barely moves mu at init
    d = StageDiscriminator(8, 384, ndf=4, sentence_norm=True)
    x = torch.randn(4, 3, 8, 8)
    assert torch.allclose(d(x, s)[0], d(x, 20 * s)[0], atol=2e-3)
    assert StackGANConfig(**TINY).sentence_norm  # the default; bundled pre-norm checkpoints say false


def test_projection_term_is_the_scaled_inner_product():
    from t2i.nn import StageDiscriminator

    torch.manual_seed(0)
    d = StageDiscriminator(8, 12, ndf=4, projection=True)
    x, s = torch.randn(3, 3, 8, 8), torch.randn(3, 12)
    cond, _ = d(x, s)
    plain = StageDiscriminator(8, 12, ndf=4)
    plain.load_state_dict({k: v for k, v in d.state_dict().items() if not k.startswith("embed.")})
    h = d.encode(x).flatten(1)
    by_hand = torch.stack([h[i] @ d.embed(s[i]) for i in range(3)]) / h.shape[1] ** 0.5
    assert torch.allclose(cond, plain(x, s)[0] + by_hand, atol=1e-5)
    # MA-GP differentiates the conditional logit w.r.t. image and sentence through both paths.
    xs, ss = x.clone().requires_grad_(), s.clone().requires_grad_()
    gi, gs = torch.autograd.grad(d(xs, ss)[0].sum(), (xs, ss))
    assert gi.abs().sum() > 0 and gs.abs().sum() > 0


def test_stage2_mode_trains_only_stage2():
    G, D = build_stackgan(StackGANConfig(**TINY, train_stage="stage2", stage1_checkpoint="unused"))
    ids = {id(p) for p in G.trainable_parameters()}
    assert ids == {id(p) for p in G.stage2.parameters()}
    assert len(D) == 1  # only the final stage's discriminator


def test_word_pool_matches_a_naive_loop_and_ignores_padding():
    """t2i.nn.WordPool: standardised sentence + out(concat over heads of sum_t softmax_t(q_h . key(w_t) / sqrt(D))
    w_t) over the real words (w = standardised word features); a fresh one is the standardised sentence."""
    import math

    import torch.nn.functional as F

    from t2i.nn import WordPool

    torch.manual_seed(0)
    B, T, Dm = 3, 5, 8
    sent, words = torch.randn(B, Dm), torch.randn(B, T, Dm)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    pool = WordPool(Dm, heads=2)
    assert torch.allclose(pool(sent, words, mask), F.layer_norm(sent, (Dm,)))  # zero-initialised projection
    torch.nn.init.normal_(pool.out.weight)
    got = pool(sent, words, mask)
    for b in range(B):
        w = F.layer_norm(words[b, mask[b]], (Dm,))  # real words only
        heads = []
        for h in range(2):
            s = torch.stack([pool.query[h] @ pool.key(w[t]) / math.sqrt(Dm) for t in range(len(w))])
            heads.append((s.softmax(0)[:, None] * w).sum(0))
        want = F.layer_norm(sent[b], (Dm,)) + pool.out(torch.cat(heads))
        assert torch.allclose(got[b], want, atol=1e-5)
    junk = words.clone()
    junk[~mask] = 100.0  # padding never read
    assert torch.allclose(pool(sent, junk, mask), got, atol=1e-6)
