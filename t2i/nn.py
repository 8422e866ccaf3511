"""Layers shared by StackGAN and AttnGAN: conditioning augmentation, sentence-conditioned up-blocks, down-blocks,
residual blocks and the per-stage image head."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConditioningAugmentation(nn.Module):
    """StackGAN's CA: sentence (B, D) -> mu, logvar (B, C); c = mu + exp(logvar / 2) * eps, eps ~ N(0, I)."""

    def __init__(self, text_dim: int, cond_dim: int, sentence_norm: bool = False, noise: float = 1.0):
        super().__init__()
        self.fc = nn.Linear(text_dim, cond_dim * 4)  # GLU halves it: 2 * cond_dim = (mu, logvar)
        # noise scales the sample: 1 is the paper's CA, 0 makes c = mu (deterministic; the KL then only bounds mu).
        self.cond_dim, self.sentence_norm, self.noise = cond_dim, sentence_norm, float(noise)

    def forward(self, sentence: torch.Tensor, generator: torch.Generator | None = None, eps=None):
        """eps (B, C): the sampling noise, when the caller draws it (pipelines draw it up front per image)."""
        if self.sentence_norm:  # per-vector zero mean, unit variance (no parameters)
            sentence = F.layer_norm(sentence, sentence.shape[-1:])
        h = F.glu(self.fc(sentence), dim=1)  # (B, 2C)
        mu, logvar = h[:, : self.cond_dim], h[:, self.cond_dim :]
        if self.noise == 0.0:  # no sample to draw
            return mu, mu, logvar
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + self.noise * torch.exp(0.5 * logvar) * eps, mu, logvar


class WordPool(nn.Module):
    """The sentence vector plus a learned attention pooling of the word features: (B, D), (B, T, D), (B, T) -> (B, D).

    A mean-pooled sentence embedding keeps little of a single word: on Shapes a caption and its left/right mirror
    are 0.99 cosine-similar in all-MiniLM-L6-v2's sentence vector (their difference is 11% of a random pair's),
    while the "left" and "right" tokens themselves differ. `heads` learned queries attend over the (standardised)
    real words; their pooled vectors are projected back to D and added to the standardised sentence. The projection
    starts at zero, so a fresh WordPool passes the standardised sentence through unchanged."""

    def __init__(self, text_dim: int, heads: int = 4):
        super().__init__()
        self.query = nn.Parameter(torch.randn(heads, text_dim) / text_dim**0.5)
        self.key = nn.Linear(text_dim, text_dim, bias=False)
        self.out = nn.Linear(heads * text_dim, text_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, sentence: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = F.layer_norm(words, words.shape[-1:])
        scores = torch.einsum("hd,btd->bht", self.query, self.key(w)) / w.shape[-1] ** 0.5
        attn = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)  # (B, heads, T) over real words
        pooled = torch.einsum("bht,btd->bhd", attn, w).flatten(1)
        return F.layer_norm(sentence, sentence.shape[-1:]) + self.out(pooled)


class CondBatchNorm(nn.Module):
    """BatchNorm whose scale and shift are predicted from a condition vector (DF-GAN's affine, simplified).

    With cond_dim = 0 it is a plain BatchNorm: the papers' generators condition only through the input noise.
    """

    def __init__(self, channels: int, cond_dim: int = 0):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=cond_dim == 0)
        self.affine = nn.Linear(cond_dim, 2 * channels) if cond_dim else None
        if self.affine is not None:  # start as the identity affine (gamma 1, beta 0)
            nn.init.zeros_(self.affine.weight)
            nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.bn(x)
        if self.affine is None:
            return x
        gamma, beta = self.affine(cond).chunk(2, dim=1)  # (B, C) each
        return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class UpBlock(nn.Module):
    """x2 nearest upsample -> conv3x3 -> (conditional) BN -> GLU, as in StackGAN/AttnGAN's upBlock."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch * 2, 3, 1, 1, bias=False)
        self.norm = CondBatchNorm(out_ch * 2, cond_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.glu(self.norm(self.conv(x), cond), dim=1)


class ResBlock(nn.Module):
    """conv3x3 -> BN -> GLU -> conv3x3 -> BN, plus the input (stage-II / refinement residual blocks)."""

    def __init__(self, ch: int, cond_dim: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch * 2, 3, 1, 1, bias=False)
        self.norm1 = CondBatchNorm(ch * 2, cond_dim)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.norm2 = CondBatchNorm(ch, cond_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = F.glu(self.norm1(self.conv1(x), cond), dim=1)
        return x + self.norm2(self.conv2(h), cond)


def down_block(in_ch: int, out_ch: int, norm: bool = True) -> nn.Sequential:
    """conv4x4 stride 2 -> (BN) -> LeakyReLU(0.2): halves the resolution (the discriminators' building block)."""
    layers = [nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def image_head(ch: int) -> nn.Sequential:
    """Feature map (B, ch, H, W) -> image (B, 3, H, W) in [-1, 1]."""
    return nn.Sequential(nn.Conv2d(ch, 3, 3, 1, 1), nn.Tanh())


class StageDiscriminator(nn.Module):
    """One resolution's discriminator: image -> 4x4 code; conditional logit from [code, sentence] and an optional
    unconditional logit (StackGAN++/AttnGAN's joint conditional + unconditional terms).

    The sentence enters through a linear projection so the matching-aware gradient penalty can differentiate
    with respect to it. With `projection`, the conditional logit also gets Miyato & Koyama's projection term
    <embed(sentence), code> / sqrt(dim) over the whole 4x4 code (positions kept): a direct bilinear image-text
    match, which the concatenation path alone learnt too slowly on Shapes (real/matching and real/mismatched
    logits still 0.44 vs 0.40 after 2,250 steps).
    """

    def __init__(self, resolution: int, text_dim: int, ndf: int = 32, cond_proj: int = 64, uncond: bool = True,
                 sentence_norm: bool = False, projection: bool = False, contrastive_dim: int = 0):  # fmt: skip
        super().__init__()
        self.sentence_norm = sentence_norm
        self.resolution = resolution
        n_down = resolution.bit_length() - 1 - 2  # log2(R) - 2 halvings: R -> 4
        if 2 ** (n_down + 2) != resolution or n_down < 1:
            raise ValueError(f"discriminator resolution must be a power of two >= 8, got {resolution}")
        chans = [min(ndf * 2**i, ndf * 8) for i in range(n_down)]
        # No BatchNorm (as in DF-GAN): D sees [real | mismatched | fake] in its phase but only fakes in G's phase,
        # and batch statistics would make it judge the same image differently in the two.
        layers = [down_block(3, chans[0], norm=False)]
        layers += [down_block(chans[i - 1], chans[i], norm=False) for i in range(1, n_down)]
        self.encode = nn.Sequential(*layers)  # (B, 3, R, R) -> (B, C, 4, 4)
        c = chans[-1]
        self.proj = nn.Linear(text_dim, cond_proj)
        self.joint = nn.Sequential(nn.Conv2d(c + cond_proj, c, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True))
        self.cond_logit = nn.Conv2d(c, 1, 4, 1, 0)
        self.uncond_logit = nn.Conv2d(c, 1, 4, 1, 0) if uncond else None
        self.embed = nn.Linear(text_dim, c * 16) if projection else None
        # XMC-GAN's image-sentence contrastive heads (train.contrastive_weight): the whole 4x4 code, so where things
        # are counts, and the standardised sentence, each to a unit vector of contrastive_dim.
        self.c_img = nn.Linear(c * 16, contrastive_dim) if contrastive_dim else None
        self.c_txt = nn.Linear(text_dim, contrastive_dim) if contrastive_dim else None

    def forward(self, image: torch.Tensor, sentence: torch.Tensor, contrastive: bool = False):
        """-> (conditional logits (B,), unconditional logits (B,) or None); with `contrastive`, a third item:
        (image embeddings, sentence embeddings), each (B, contrastive_dim), unit-norm, float32."""
        h = self.encode(image)  # (B, C, 4, 4)
        if self.sentence_norm:
            sentence = F.layer_norm(sentence, sentence.shape[-1:])
        s = self.proj(sentence)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])  # (B, P, 4, 4)
        cond = self.cond_logit(self.joint(torch.cat([h, s], dim=1))).flatten()
        if self.embed is not None:
            code = h.flatten(1)  # (B, C*16)
            cond = cond + (self.embed(sentence) * code).sum(1) / code.shape[1] ** 0.5
        uncond = self.uncond_logit(h).flatten() if self.uncond_logit is not None else None
        if not contrastive:
            return cond, uncond
        if self.c_img is None:
            raise ValueError("this discriminator has no contrastive heads (built with contrastive_dim=0)")
        ei = F.normalize(self.c_img(h.flatten(1)).float(), dim=-1)
        return cond, uncond, (ei, self.embed_text(sentence, normed=True))

    def embed_text(self, sentence: torch.Tensor, normed: bool = False) -> torch.Tensor:
        """The contrastive sentence head alone (extra negatives need no image): (B, text_dim) -> unit (B, dim)."""
        if self.sentence_norm and not normed:
            sentence = F.layer_norm(sentence, sentence.shape[-1:])
        return F.normalize(self.c_txt(sentence).float(), dim=-1)


class LayoutInject(nn.Module):
    """h + conv3x3(the painted layout map, area-resized to h's grid): how a GAN generator reads a layout (the map of
    t2i.models.diffusion.LayoutNet.paint). The convolution starts at zero, so a generator grown from one without a
    layout draws what it drew until the map earns a say."""

    def __init__(self, map_channels: int, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(map_channels, channels, 3, 1, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, h: torch.Tensor, layout: torch.Tensor | None) -> torch.Tensor:
        if layout is None:
            return h
        return h + self.conv(resize_map(layout, h.shape[-1]).to(h.dtype))


def resize_map(layout: torch.Tensor, size: int) -> torch.Tensor:
    """A (B, C, R, R) layout map on a size x size grid (area averaging down, nearest up)."""
    if layout.shape[-1] == size:
        return layout
    mode = "area" if layout.shape[-1] > size else "nearest"
    return F.interpolate(layout, size=(size, size), mode=mode)


class LayoutPatchD(nn.Module):
    """pix2pix's conditional PatchGAN over [image, layout map]: one logit per patch of an 8 x 8 grid (4 x 4 below
    32 x 32), saying whether this part of the image draws what the map puts there. It sits beside the stage's
    sentence discriminator (whose image code, read also by the contrastive heads, must not see the map: the map is a
    function of the caption, so the contrastive match would be read off it instead of off the image)."""

    def __init__(self, resolution: int, map_channels: int, ndf: int = 32):
        super().__init__()
        grid = 8 if resolution >= 32 else 4
        n_down = (resolution // grid).bit_length() - 1
        if grid << n_down != resolution or n_down < 1:
            raise ValueError(f"layout discriminator resolution must be a power of two >= 8, got {resolution}")
        chans = [min(ndf * 2**i, ndf * 8) for i in range(n_down)]
        layers = [down_block(3 + map_channels, chans[0], norm=False)]
        layers += [down_block(chans[i - 1], chans[i], norm=False) for i in range(1, n_down)]
        self.encode = nn.Sequential(*layers)
        self.logit = nn.Conv2d(chans[-1], 1, 3, 1, 1)

    def forward(self, image: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) images, (B, C, R', R') maps -> (B, P) patch logits."""
        x = torch.cat([image, resize_map(layout, image.shape[-1]).to(image.dtype)], dim=1)
        return self.logit(self.encode(x)).flatten(1)


def crop_boxes(images: torch.Tensor, rows: torch.Tensor, boxes: torch.Tensor, size: int,
               margin: float = 0.1) -> torch.Tensor:  # fmt: skip
    """(B, 3, R, R) images, (N,) image rows, (N, 4) boxes (x0, y0, x1, y1 in [0, 1]) -> (N, 3, size, size) crops of
    each box grown by `margin` of its side on every side, bilinearly resampled (differentiable in the images)."""
    b = boxes.float()
    cx, cy = (b[:, 0] + b[:, 2]) - 1, (b[:, 1] + b[:, 3]) - 1  # centres in [-1, 1]
    sx, sy = (b[:, 2] - b[:, 0]) * (1 + 2 * margin), (b[:, 3] - b[:, 1]) * (1 + 2 * margin)  # half-sides x 2 / 2
    theta = torch.zeros(len(b), 2, 3, device=b.device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sy, cy
    grid = F.affine_grid(theta, (len(b), 3, size, size), align_corners=False)
    return F.grid_sample(images[rows].float(), grid, align_corners=False, padding_mode="border").to(images.dtype)


class ObjectD(nn.Module):
    """Obj-GAN's object-wise discriminator: a crop of one object's box and the word features that name it (its
    colour and shape words, averaged) -> one logit, unconditional + a projection term <embed(words), code>. Matching-
    aware like the stage discriminators: a real crop with its own object's words is real, with another object's words
    or a generated crop is fake. The stage discriminators judge whole images against whole captions; this one asks,
    for every object, "is this a <colour> <shape>?", where the GANs' drawings fail (blobs for shapes)."""

    def __init__(self, text_dim: int, ndf: int = 32, size: int = 32):
        super().__init__()
        n_down = (size // 4).bit_length() - 1
        if 4 << n_down != size or n_down < 1:
            raise ValueError(f"object crop size must be a power of two >= 8, got {size}")
        chans = [min(ndf * 2**i, ndf * 8) for i in range(n_down)]
        layers = [down_block(3, chans[0], norm=False)]
        layers += [down_block(chans[i - 1], chans[i], norm=False) for i in range(1, n_down)]
        self.encode = nn.Sequential(*layers)  # (N, 3, size, size) -> (N, C, 4, 4)
        self.size = size
        self.uncond = nn.Linear(chans[-1] * 16, 1)
        self.embed = nn.Linear(text_dim, chans[-1] * 16)

    def forward(self, crops: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """(N, 3, size, size) crops, (N, D) object word features -> (N,) logits."""
        code = self.encode(crops).flatten(1)
        w = F.layer_norm(words.to(code.dtype), words.shape[-1:])
        return self.uncond(code).flatten() + (self.embed(w) * code).sum(1) / code.shape[1] ** 0.5
