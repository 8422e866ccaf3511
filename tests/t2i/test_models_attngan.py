"""AttnGAN and DAMSM: tiny forward/backward; masked word attention equals a naive per-sample loop."""

import torch

from t2i.models.attngan import DAMSM, AttnGANConfig, DAMSMConfig, WordAttention, build_attngan

TINY = dict(stages=[8, 16], text_dim=12, z_dim=4, cond_dim=6, ngf=4, ndf=4, res_blocks=1)


def _text(B=3, T=6, D=12):
    torch.manual_seed(0)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate([6, 3, 1][:B]):
        mask[i, :n] = True
    return torch.randn(B, T, D), mask, torch.randn(B, D)


def test_forward_backward_and_attention_shapes():
    G, D = build_attngan(AttnGANConfig(**TINY, cond_affine=True))
    words, mask, sent = _text()
    out = G(torch.randn(3, 4), sent, words, mask)
    assert [tuple(x.shape) for x in out.images] == [(3, 3, 8, 8), (3, 3, 16, 16)]
    (attn,) = out.attention
    assert attn.shape == (3, 6, 8, 8)
    assert torch.allclose(attn.sum(1), torch.ones(3, 8, 8), atol=1e-5)  # a distribution over words per pixel
    assert (attn[1, 3:] == 0).all() and (attn[2, 1:] == 0).all()  # padding never attended
    loss = sum(d(x, sent)[0].mean() + d(x, sent)[1].mean() for d, x in zip(D, out.images))
    loss.backward()
    assert all(p.grad is not None for p in G.parameters())


def test_coarse_refinement_sees_the_whole_object():
    """refine_down k: the refinement stage attends and runs its residual blocks 2^k times coarser and comes back up
    through a skip. Its output at one pixel then depends on hidden features 8+ pixels away, which the paper's
    full-resolution stage (two 3x3 residual blocks and the up-block's 3x3) cannot see. k=0 keeps the paper's
    parameters exactly; a k that would leave the first refinement under 4x4 is refused."""
    import pytest

    from t2i.models.attngan import RefineStage

    words, mask, sent = _text()
    cfg = dict(TINY, stages=[16, 32], res_blocks=2)
    assert set(RefineStage(AttnGANConfig(**cfg)).state_dict()) == {
        k for k in RefineStage(AttnGANConfig(**cfg, refine_down=2)).state_dict() if not k.startswith(("down", "lift"))
    }
    for k, far_reaches in [(0, False), (2, True)]:
        stage = RefineStage(AttnGANConfig(**cfg, refine_down=k)).eval()
        h = torch.randn(3, 4, 16, 16, requires_grad=True)
        out, attn = stage(h, torch.randn(3, 6), words, mask)
        assert out.shape == (3, 4, 32, 32) and attn.shape == (3, 6, 16 >> k, 16 >> k)
        assert torch.allclose(attn.sum(1), torch.ones_like(attn[:, 0]), atol=1e-5) and (attn[2, 1:] == 0).all()
        (g,) = torch.autograd.grad(out[0, :, 0, 0].sum(), h)  # which input pixels reach output pixel (0, 0)
        assert (g[0, :, 10:, 10:].abs().sum() > 0) == far_reaches
        assert g[1:].abs().sum() == 0  # eval-mode BN: no sample sees another
    G, _ = build_attngan(AttnGANConfig(**TINY, refine_down=1))
    assert G(torch.randn(3, 4), sent, words, mask).images[-1].shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="refine_down must be >= 0 and leave the first refinement at least 4x4"):
        AttnGANConfig(**TINY, refine_down=2)  # 8 -> 2x2


def test_masked_word_attention_equals_naive_loop():
    torch.manual_seed(1)
    att = WordAttention(5, 12)
    words, mask, _ = _text()
    h = torch.randn(3, 5, 4, 4)
    ctx, attn = att(h, words, mask)
    for b in range(3):
        w = att.proj(words[b, mask[b]])  # (T_b, C): this caption's real words only, no mask needed
        q = h[b].flatten(1).t()  # (HW, C)
        a = torch.softmax(q @ w.t(), dim=1)  # (HW, T_b)
        c = (a @ w).t().reshape(5, 4, 4)
        assert torch.allclose(ctx[b], c, atol=1e-5)
        n = int(mask[b].sum())
        assert torch.allclose(attn[b, :n], a.t().reshape(n, 4, 4), atol=1e-6)


def test_damsm_losses_backward():
    m = DAMSM(DAMSMConfig(resolution=16, text_dim=12, embed_dim=8, channels=4, region_size=4))
    words, mask, sent = _text()
    lw, ls = m.losses(torch.rand(3, 3, 16, 16) * 2 - 1, words, mask, sent)
    assert lw.item() > 0 and ls.item() > 0
    (lw + ls).backward()
    assert all(p.grad is not None for p in m.parameters())
