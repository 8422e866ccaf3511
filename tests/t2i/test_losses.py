"""GAN losses, the KL term and DAMSM's word/sentence losses against hand computations on small tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from t2i import losses as L


def test_kl_matches_hand_computation():
    mu = torch.tensor([[0.5, -1.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)]])
    # per dim: -0.5 * (1 + logvar - mu^2 - var): dim0 = -0.5 * (1 + 0 - 0.25 - 1) = 0.125
    # dim1 = -0.5 * (1 + log 4 - 1 - 4) = -0.5 * (log 4 - 4) = 2 - 0.5 log 4
    expected = (0.125 + (2 - 0.5 * math.log(4.0))) / 2
    assert torch.allclose(L.kl_loss(mu, logvar), torch.tensor(expected), atol=1e-6)
    assert L.kl_loss(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0


def test_gan_losses_hand_values():
    x = torch.tensor([2.0, -0.5])
    assert torch.allclose(L.d_real_loss("hinge", x), torch.tensor((0.0 + 1.5) / 2))
    assert torch.allclose(L.d_fake_loss("hinge", x), torch.tensor((3.0 + 0.5) / 2))
    assert torch.allclose(L.g_adv_loss("hinge", x), torch.tensor(-0.75))
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731  softplus: -log sigmoid(-v)
    assert torch.allclose(L.d_real_loss("bce", x), torch.tensor((sp(-2.0) + sp(0.5)) / 2), atol=1e-6)
    assert torch.allclose(L.d_fake_loss("bce", x), torch.tensor((sp(2.0) + sp(-0.5)) / 2), atol=1e-6)
    total = L.matching_aware_d_loss("hinge", x, x, x)
    assert torch.allclose(total, L.d_real_loss("hinge", x) + L.d_fake_loss("hinge", x))
    with pytest.raises(ValueError, match="unknown GAN loss"):
        L.g_adv_loss("wgan", x)


def test_ma_gp_of_linear_critic():
    # D(x, s) = sum(a * x) + sum(b * s): gradient norm is sqrt(|a|^2 + |b|^2) for every sample.
    a, b = torch.full((1, 2, 2), 0.5), torch.tensor([1.0, 2.0])
    fn = lambda x, s: (x * a).flatten(1).sum(1) + (s * b).sum(1)  # noqa: E731
    gp = L.ma_gp(fn, torch.randn(3, 1, 2, 2), torch.randn(3, 2), k=2.0, p=6.0)
    norm = math.sqrt(4 * 0.25 + 1 + 4)
    assert torch.allclose(gp, torch.tensor(2.0 * norm**6), rtol=1e-5)


def naive_damsm_word_loss(words, mask, regions, g1, g2, g3):
    """AttnGAN's words_loss written as loops over captions and images, each caption cut to its real words."""
    B = words.shape[0]
    R = torch.zeros(B, B)  # R[image j, caption i]
    for i in range(B):
        w = words[i, mask[i]]  # (T_i, E)
        for j in range(B):
            reg = regions[j]  # (E, N)
            s = w @ reg  # (T_i, N)
            a = F.softmax(s, dim=0)  # over words
            a = F.softmax(g1 * a, dim=1)  # over regions
            ctx = a @ reg.t()  # (T_i, E)
            r = torch.stack([F.cosine_similarity(ctx[t], w[t], dim=0) for t in range(w.shape[0])])
            R[j, i] = torch.log(torch.exp(g2 * r).sum()) / g2
    S = g3 * R
    y = torch.arange(B)
    return F.cross_entropy(S, y) + F.cross_entropy(S.t(), y)


def test_damsm_word_loss_matches_naive_loops():
    torch.manual_seed(0)
    B, T, E, N = 3, 5, 4, 6
    words, regions = torch.randn(B, T, E), torch.randn(B, E, N)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    got = L.damsm_word_loss(words, mask, regions, 4.0, 5.0, 10.0)
    assert torch.allclose(got, naive_damsm_word_loss(words, mask, regions, 4.0, 5.0, 10.0), atol=1e-5)
    # Padding content must not matter.
    words2 = words.clone()
    words2[~mask] = 100.0
    assert torch.allclose(L.damsm_word_loss(words2, mask, regions), got, atol=1e-5)


def test_damsm_sentence_loss_hand_values():
    code = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    sent = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    cos = torch.tensor([[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]])  # [image, caption]
    S = 10.0 * cos
    p_img = -(torch.log_softmax(S, 1)[0, 0] + torch.log_softmax(S, 1)[1, 1]) / 2
    p_cap = -(torch.log_softmax(S.t(), 1)[0, 0] + torch.log_softmax(S.t(), 1)[1, 1]) / 2
    assert torch.allclose(L.damsm_sentence_loss(code, sent, 10.0), p_img + p_cap, atol=1e-5)
    # Pairs marked as describing the same thing are not negatives.
    same = torch.ones(2, 2, dtype=torch.bool)
    assert L.damsm_sentence_loss(code, sent, 10.0, same).item() == pytest.approx(0.0, abs=1e-6)


def test_contrastive_loss_matches_naive_loops():
    """XMC-GAN's sentence loss: per pair -log softmax(cos / tau) over the batch, both directions, averaged."""
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(5, 6, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 6, generator=g), dim=-1)
    tau, total = 0.1, 0.0
    for i in range(5):
        row = [math.exp(float(img[i] @ txt[j]) / tau) for j in range(5)]
        col = [math.exp(float(img[j] @ txt[i]) / tau) for j in range(5)]
        total += -math.log(row[i] / sum(row)) - math.log(col[i] / sum(col))
    assert L.contrastive_loss(img, txt, tau).item() == pytest.approx(total / 10, rel=1e-5)
    assert L.contrastive_loss(img, img, tau) < L.contrastive_loss(img, txt, tau)  # matched pairs score lower
    same = torch.ones(5, 5, dtype=torch.bool)  # every pair describes the same thing: nothing left to contrast
    assert L.contrastive_loss(img, txt, tau, same).item() == pytest.approx(0.0, abs=1e-6)
    # A hard negative for images 1 and 3 joins only their image->text softmax.
    hard = F.normalize(torch.randn(2, 6, generator=g), dim=-1)
    total = 0.0
    for i in range(5):
        row = [math.exp(float(img[i] @ txt[j]) / tau) for j in range(5)]
        row += [math.exp(float(img[i] @ hard[[1, 3].index(i)]) / tau)] if i in (1, 3) else []
        col = [math.exp(float(img[j] @ txt[i]) / tau) for j in range(5)]
        total += -math.log(row[i] / sum(row)) - math.log(col[i] / sum(col))
    got = L.contrastive_loss(img, txt, tau, hard=hard, hard_rows=torch.tensor([1, 3]))
    assert got.item() == pytest.approx(total / 10, rel=1e-5) and got > L.contrastive_loss(img, txt, tau)


def test_image_contrastive_loss_matches_naive_loops():
    """XMC-GAN's image-image loss: fake i's positive is real i, the batch's other reals its negatives (and the other
    way round), -log softmax(cos / tau) averaged over both directions; `same` pairs are not negatives."""
    g = torch.Generator().manual_seed(1)
    fake = F.normalize(torch.randn(4, 6, generator=g), dim=-1)
    real = F.normalize(torch.randn(4, 6, generator=g), dim=-1)
    tau, same = 0.2, torch.eye(4, dtype=torch.bool)
    same[0, 2] = same[2, 0] = True  # images 0 and 2 have the same caption
    total = 0.0
    for i in range(4):
        neg = [j for j in range(4) if j == i or not same[i, j]]
        row = {j: math.exp(float(fake[i] @ real[j]) / tau) for j in neg}
        col = {j: math.exp(float(fake[j] @ real[i]) / tau) for j in neg}
        total += -math.log(row[i] / sum(row.values())) - math.log(col[i] / sum(col.values()))
    got = L.image_contrastive_loss(fake, real, tau, same)
    assert got.item() == pytest.approx(total / 8, rel=1e-5)
    assert L.image_contrastive_loss(real, real, tau) < L.image_contrastive_loss(fake, real, tau)
