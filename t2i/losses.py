"""GAN objectives for the text-to-image families, selected by name in the config.

- "bce": the papers' non-saturating binary cross-entropy (StackGAN, AttnGAN).
- "hinge": hinge loss; pair it with DF-GAN's matching-aware zero-centred gradient penalty (`ma_gp`).
Both are matching-aware (Reed et al. / StackGAN): the discriminator sees real/matching (1), real/mismatched (0)
and fake/matching (0). Also the conditioning-augmentation KL term and AttnGAN's DAMSM word/sentence losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_LOSSES = ("bce", "hinge")


def _check(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"unknown GAN loss {kind!r}; choose one of {GAN_LOSSES}")


def d_real_loss(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss pushing `logits` towards 'real' (label 1 / above +1)."""
    _check(kind)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    return F.relu(1.0 - logits).mean()


def d_fake_loss(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss pushing `logits` towards 'fake' (label 0 / below -1)."""
    _check(kind)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    return F.relu(1.0 + logits).mean()


def g_adv_loss(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Generator loss on D's logits for fakes: non-saturating -log D(G(z)) or hinge's -D(G(z))."""
    _check(kind)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    return -logits.mean()


def matching_aware_d_loss(
    kind: str,
    real_match: torch.Tensor,
    real_mismatch: torch.Tensor,
    fake_match: torch.Tensor,
    real_uncond: torch.Tensor | None = None,
    fake_uncond: torch.Tensor | None = None,
    uncond_weight: float = 1.0,
) -> torch.Tensor:
    """StackGAN's D loss: real/matching vs (fake/matching + real/mismatched) / 2, plus optional unconditional terms."""
    loss = d_real_loss(kind, real_match) + 0.5 * (d_fake_loss(kind, fake_match) + d_fake_loss(kind, real_mismatch))
    if real_uncond is not None and fake_uncond is not None:
        loss = loss + uncond_weight * (d_real_loss(kind, real_uncond) + d_fake_loss(kind, fake_uncond))
    return loss


def ma_gp(d_cond_fn, images: torch.Tensor, sentence: torch.Tensor, k: float = 2.0, p: float = 6.0) -> torch.Tensor:
    """DF-GAN's matching-aware gradient penalty on real, matching pairs: k * E[||grad_(x, s) D(x, s)||^p].

    `d_cond_fn(images, sentence) -> logits (B,)`; gradients w.r.t. both the image and the sentence feature.
    """
    images = images.detach().requires_grad_(True)
    sentence = sentence.detach().requires_grad_(True)
    out = d_cond_fn(images, sentence)
    gi, gs = torch.autograd.grad(out.sum(), (images, sentence), create_graph=True)
    norm = torch.sqrt(gi.flatten(1).pow(2).sum(1) + gs.flatten(1).pow(2).sum(1) + 1e-12)  # (B,)
    return k * norm.pow(p).mean()


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), averaged over batch and dimensions (as StackGAN's code does)."""
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


# ---------------------------------------------------------------------------------------------------------------
# DAMSM (AttnGAN, section 3.3): matching between image regions / image code and words / sentence.


def _pair_ce(scores: torch.Tensor, same: torch.Tensor | None, extra: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric cross-entropy over a (B_img, B_cap) score matrix whose diagonal holds the true pairs.

    `same` (B, B) bool marks off-diagonal pairs that also match (same description): they are excluded as negatives.
    `extra` (B, K): more caption scores per image (-inf where an image has none), negatives in the image->caption
    direction only.
    """
    B = scores.shape[0]
    if same is not None:
        off = same & ~torch.eye(B, dtype=torch.bool, device=scores.device)
        scores = scores.masked_fill(off, float("-inf"))
    labels = torch.arange(B, device=scores.device)
    rows = scores if extra is None else torch.cat([scores, extra], 1)
    return F.cross_entropy(rows, labels) + F.cross_entropy(scores.t(), labels)


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    tau: float = 0.1,
    same: torch.Tensor | None = None,
    hard: torch.Tensor | None = None,
    hard_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """XMC-GAN's image-sentence contrastive loss: unit vectors (B, E) each, softmax over cosine / tau across the
    batch, image->text and text->image averaged (true pairs on the diagonal; `same` as in `_pair_ce`).

    `hard` (R, E): one extra caption embedding per image in `hard_rows` (R,), a hard negative (a near miss) that
    joins that image's image->text softmax."""
    scores = image_emb @ text_emb.t() / tau
    extra = None
    if hard is not None:
        extra = torch.full((scores.shape[0], 1), float("-inf"), device=scores.device, dtype=scores.dtype)
        extra[hard_rows, 0] = ((image_emb[hard_rows] * hard).sum(1) / tau).to(scores.dtype)  # bf16 under autocast
    return _pair_ce(scores, same, extra) / 2


def image_contrastive_loss(
    fake_emb: torch.Tensor, real_emb: torch.Tensor, tau: float = 0.1, same: torch.Tensor | None = None
) -> torch.Tensor:
    """XMC-GAN's image-image contrastive loss: unit embeddings (B, E) of generated images and of the real images of
    their captions; fake i and real i are the positive pair, the other real images of the batch the negatives
    (`same` as in `_pair_ce`), both directions averaged."""
    return _pair_ce(fake_emb @ real_emb.t() / tau, same) / 2


def damsm_sentence_loss(
    image_code: torch.Tensor, sentence: torch.Tensor, gamma3: float = 10.0, same: torch.Tensor | None = None
) -> torch.Tensor:
    """L_s: image codes (B, E) vs sentence codes (B, E): softmax over gamma3 * cosine similarity, both directions."""
    scores = gamma3 * F.normalize(image_code, dim=-1) @ F.normalize(sentence, dim=-1).t()  # (B_img, B_cap)
    return _pair_ce(scores, same)


def word_region_attention(words: torch.Tensor, mask: torch.Tensor, regions: torch.Tensor, gamma1: float = 4.0):
    """For every (caption i, image j): a region-context vector per word of caption i.

    words (B, T, E), mask (B, T), regions (B, E, N) -> context (B_cap, B_img, T, E), attention (B_cap, B_img, T, N).
    As in AttnGAN: a word-region similarity normalised over the (real) words of the caption, then softmax over the
    regions with sharpness gamma1.
    """
    s = torch.einsum("ite,jen->ijtn", words, regions)  # (B_cap, B_img, T, N)
    m = mask[:, None, :, None]  # (B_cap, 1, T, 1)
    s = s.masked_fill(~m, float("-inf")).softmax(dim=2)  # over words
    s = s.masked_fill(~m, 0.0)
    attn = (gamma1 * s).softmax(dim=3)  # over regions
    context = torch.einsum("ijtn,jen->ijte", attn, regions)
    return context, attn


def damsm_word_loss(
    words: torch.Tensor,
    mask: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    gamma3: float = 10.0,
    same: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_w: R(Q_j, D_i) = (1 / gamma2) log sum_t exp(gamma2 cos(c_t, e_t)) over the real words t; softmax over
    gamma3 * R in both directions. words (B, T, E), mask (B, T) bool, regions (B, E, N)."""
    return _pair_ce(gamma3 * word_relevance(words, mask, regions, gamma1, gamma2).t(), same)


def word_relevance(words, mask, regions, gamma1: float = 4.0, gamma2: float = 5.0) -> torch.Tensor:
    """AttnGAN's word-level image-text relevance R(Q, D) for every (caption i, image j): (B_cap, B_img)."""
    context, _ = word_region_attention(words, mask, regions, gamma1)
    r = F.cosine_similarity(context, words[:, None].expand_as(context), dim=-1)  # (B_cap, B_img, T)
    r = (gamma2 * r).masked_fill(~mask[:, None, :], float("-inf"))
    return torch.logsumexp(r, dim=2) / gamma2
