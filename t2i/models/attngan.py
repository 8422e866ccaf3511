"""AttnGAN (Xu et al., 2018) on transformer word features, and its DAMSM.

Generator: CA(sentence) + noise -> first stage image; every following stage doubles the resolution after attending,
at each pixel, over the caption's word features (padding masked), joining the word context to the hidden features
and refining them through residual blocks. One matching-aware discriminator per stage (conditional +
unconditional logits). DAMSM: an image encoder (from scratch: local region features + a global code) and a text
side projecting the frozen transformer's word and sentence features into the same space, pretrained with the
word- and sentence-level matching losses and then frozen as the generator's DAMSM loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2i.losses import damsm_sentence_loss, damsm_word_loss
from t2i.models.stackgan import (
    GenOutput,
    LayoutFields,
    build_discriminators,
    build_layout_net,
    generator_layout,
    generator_trainable,
    inject,
    layout_injections,
)
from t2i.nn import ConditioningAugmentation, ResBlock, UpBlock, WordPool, down_block, image_head


@dataclass
class AttnGANConfig(LayoutFields):
    """Generator/discriminator sizes (defaults: CPU-sized, 32 -> 64 on 64x64 Shapes)."""

    stages: list = field(default_factory=lambda: [32, 64])  # resolution of each stage; each doubles the previous
    text_dim: int = 384  # word/sentence feature size of the text encoder
    z_dim: int = 100
    cond_dim: int = 100  # CA output size (paper: 100)
    ngf: int = 32  # hidden width of the refinement stages (paper: 32); stage 0 starts at 4x4 x 16ngf
    ndf: int = 32
    res_blocks: int = 2  # per refinement stage (paper: 2)
    # Refinement stages attend over the words and run their residual blocks 2^refine_down times coarser, then come
    # back up and join the stage's input (a U-Net skip) before the x2 up-block. 0 = the paper (everything at the
    # stage's resolution): 3x3 convolutions at 32x32 can restyle an object but not redraw its outline.
    refine_down: int = 0
    cond_affine: bool = False  # also condition every BN on c (DF-GAN-like); the paper only concatenates
    # Standardise the sentence feature (parameter-free LayerNorm) before CA and D. MiniLM's is unit-norm, ~0.04 per
    # dimension: without this the text is ~1% of the CA noise at init and takes thousands of steps to be heard.
    sentence_norm: bool = True
    # Scale of CA's sampling noise (1 = the paper). At 1 the KL holds sigma near 1 while the caption spreads mu far
    # less: on the Shapes bundles a linear probe reads position from mu at 0.92 but from c at 0.36-0.56
    # (benchmarks/ca_probe.py), so the generator barely sees where to draw. 0 conditions on mu alone.
    ca_noise: float = 1.0
    d_projection: bool = False  # add a projection-discriminator term to D's conditional logit (training only)
    word_pool: bool = False  # as in StackGANConfig: the sentence vector plus a learned attention pooling of the words
    uncond_logits: bool = True
    damsm_checkpoint: str | None = None  # a pretrained DAMSM folder; needed when lambda_damsm > 0

    def __post_init__(self):
        self.stages = [int(s) for s in self.stages]
        if not self.stages or self.stages[0] < 8 or self.stages[0] & (self.stages[0] - 1):
            raise ValueError(f"stages must start with a power of two >= 8, got {self.stages}")
        if not 0 <= int(self.refine_down) or (1 << int(self.refine_down)) > self.stages[0] // 4:
            raise ValueError(f"refine_down must be >= 0 and leave the first refinement at least 4x4, got "
                             f"{self.refine_down} for stages {self.stages}")  # fmt: skip
        self.refine_down = int(self.refine_down)
        for a, b in zip(self.stages, self.stages[1:]):
            if b != 2 * a:
                raise ValueError(f"each stage must double the previous resolution, got {self.stages}")

    @property
    def resolution(self) -> int:
        return self.stages[-1]


class WordAttention(nn.Module):
    """Pixel-to-word attention: h (B, C, H, W), words (B, T, D), mask (B, T) -> context like h, attn (B, T, H, W).

    Words are projected to C channels; each pixel's query scores every real word (padding gets -inf), softmax over
    words, and the context is the attention-weighted sum of projected words.
    """

    def __init__(self, channels: int, text_dim: int):
        super().__init__()
        self.proj = nn.Linear(text_dim, channels, bias=False)

    def forward(self, h: torch.Tensor, words: torch.Tensor, mask: torch.Tensor):
        B, C, H, W = h.shape
        keys = self.proj(words)  # (B, T, C)
        scores = torch.einsum("bcn,btc->bnt", h.flatten(2), keys)  # (B, HW, T)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        attn = scores.softmax(dim=-1)  # (B, HW, T)
        context = torch.einsum("bnt,btc->bcn", attn, keys).view(B, C, H, W)
        return context, attn.transpose(1, 2).reshape(B, -1, H, W)


class InitStage(nn.Module):
    """noise + c -> 4x4 x 16ngf -> up-blocks -> (B, ngf, R0, R0) hidden features."""

    def __init__(self, cfg: AttnGANConfig):
        super().__init__()
        c0 = cfg.ngf * 16
        self.fc = nn.Sequential(nn.Linear(cfg.z_dim + cfg.cond_dim, c0 * 16 * 2, bias=False),
                                nn.BatchNorm1d(c0 * 16 * 2), nn.GLU(dim=1))  # fmt: skip
        n_up = cfg.stages[0].bit_length() - 1 - 2
        chans = [c0 // 2 ** min(i, 4) for i in range(n_up)] + [cfg.ngf]
        cond = cfg.cond_dim if cfg.cond_affine else 0
        self.ups = nn.ModuleList(UpBlock(chans[i], chans[i + 1], cond) for i in range(n_up))
        self.c0 = c0
        self.lay = layout_injections(cfg, chans)  # at 4x4 and after every up-block

    def forward(self, z, c, layout=None):
        h = inject(self.lay, 0, self.fc(torch.cat([z, c], dim=1)).view(z.shape[0], self.c0, 4, 4), layout)
        for i, up in enumerate(self.ups):
            h = inject(self.lay, i + 1, up(h, c), layout)
        return h  # (B, ngf, R0, R0)


class RefineStage(nn.Module):
    """[h, word context] -> residual blocks -> x2 up-block: the next stage's hidden features.

    With refine_down k > 0 the attention and residual blocks run on h brought k halvings down (stride-2 convs), the
    result is brought back up and concatenated with h before the up-block."""

    def __init__(self, cfg: AttnGANConfig):
        super().__init__()
        g, k = cfg.ngf, cfg.refine_down
        cond = cfg.cond_dim if cfg.cond_affine else 0
        chans = [g * 2 ** min(i, 3) for i in range(k + 1)]  # g, 2g, 4g, 8g, 8g, ...
        self.down = nn.ModuleList(down_block(chans[i], chans[i + 1]) for i in range(k))
        self.attn = WordAttention(chans[k], cfg.text_dim)
        self.res = nn.ModuleList(ResBlock(chans[k] * 2, cond) for _ in range(cfg.res_blocks))
        lift_in = [chans[k] * 2] + [chans[i] for i in range(k - 1, 0, -1)]
        self.lift = nn.ModuleList(UpBlock(c_in, chans[k - 1 - j], cond) for j, c_in in enumerate(lift_in[:k]))
        self.up = UpBlock(g * 2, g, cond)
        self.lay = layout_injections(cfg, [g])  # after the up-block

    def forward(self, h, c, words, mask, layout=None):
        x = h
        for block in self.down:
            x = block(x)
        context, attn = self.attn(x, words, mask)
        x = torch.cat([x, context], dim=1)  # (B, 2C, H', W')
        for block in self.res:
            x = block(x, c)
        if self.down:
            for up in self.lift:
                x = up(x, c)
            x = torch.cat([h, x], dim=1)  # (B, 2ngf, H, W)
        return inject(self.lay, 0, self.up(x, c), layout), attn


class AttnGANGenerator(nn.Module):
    """Multi-stage generator; stage i > 0 attends over the words at stage i-1's resolution."""

    def __init__(self, cfg: AttnGANConfig):
        super().__init__()
        self.cfg = cfg
        self.ca = ConditioningAugmentation(cfg.text_dim, cfg.cond_dim, cfg.sentence_norm, cfg.ca_noise)
        self.init = InitStage(cfg)
        self.refine = nn.ModuleList(RefineStage(cfg) for _ in cfg.stages[1:])
        self.heads = nn.ModuleList(image_head(cfg.ngf) for _ in cfg.stages)
        self.num_ca = 1
        self.pool = WordPool(cfg.text_dim) if cfg.word_pool else None
        self.layout_net = build_layout_net(cfg)

    def forward(self, z, sentence, words, mask, generator=None, ca_eps=None, layout=None) -> GenOutput:
        """z (B, z_dim), sentence (B, D), words (B, T, D), mask (B, T) -> GenOutput (images per stage, attention).

        ca_eps: optional [(B, cond_dim)] CA noise; else drawn from `generator`. layout: as in StackGANGenerator."""
        layout = generator_layout(self, words, mask, layout)
        if self.pool is not None:
            sentence = self.pool(sentence, words, mask)
        c, mu, logvar = self.ca(sentence, generator, ca_eps[0] if ca_eps else None)
        h = self.init(z, c, layout)
        images, maps = [self.heads[0](h)], []
        for stage, head in zip(self.refine, self.heads[1:]):
            h, attn = stage(h, c, words, mask, layout)
            images.append(head(h))
            maps.append(attn)
        return GenOutput(images, [mu], [logvar], maps)

    def trainable_parameters(self):
        return generator_trainable(self)


def build_attngan(cfg: AttnGANConfig, contrastive_dim: int = 0):
    """-> (generator, one discriminator per stage)."""
    return AttnGANGenerator(cfg), build_discriminators(
        cfg.stages, cfg.text_dim, cfg.ndf, cfg.uncond_logits, cfg.sentence_norm, cfg.d_projection, contrastive_dim
    )


# ---------------------------------------------------------------------------------------------------------------
# DAMSM.


@dataclass
class DAMSMConfig:
    """DAMSM encoders and loss constants (gamma1, gamma2, gamma3 from the AttnGAN paper)."""

    resolution: int = 64  # images are resized to this before encoding
    text_dim: int = 384
    embed_dim: int = 256  # common space of regions/words and image code/sentence (paper: 256)
    channels: int = 32  # image encoder width
    region_size: int = 8  # regions form a region_size x region_size grid (paper: 17x17 from Inception mixed_6e)
    gamma1: float = 4.0
    gamma2: float = 5.0
    gamma3: float = 10.0

    def __post_init__(self):
        if self.resolution % self.region_size or (self.resolution // self.region_size) & (
            self.resolution // self.region_size - 1
        ):
            raise ValueError("resolution / region_size must be a power of two")


class DAMSMImageEncoder(nn.Module):
    """Image (B, 3, R, R) -> regions (B, E, r, r) and a global code (B, E); a small CNN trained from scratch."""

    def __init__(self, cfg: DAMSMConfig):
        super().__init__()
        n_down = (cfg.resolution // cfg.region_size).bit_length() - 1
        layers, ch = [nn.Conv2d(3, cfg.channels, 3, 1, 1), nn.LeakyReLU(0.2, True)], cfg.channels
        for i in range(n_down):
            out = cfg.channels * 2 ** min(i + 1, 3)
            layers += [nn.Conv2d(ch, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            ch = out
        self.features = nn.Sequential(*layers)
        self.regions = nn.Conv2d(ch, cfg.embed_dim, 1)
        self.code = nn.Sequential(nn.Conv2d(ch, ch, 3, 2, 1), nn.LeakyReLU(0.2, True), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(ch, cfg.embed_dim))  # fmt: skip
        self.resolution = cfg.resolution

    def forward(self, images):
        if images.shape[-1] != self.resolution:
            images = F.interpolate(images, size=(self.resolution,) * 2, mode="bilinear", align_corners=False)
        f = self.features(images)
        return self.regions(f), self.code(f)


class DAMSMTextEncoder(nn.Module):
    """Frozen transformer features -> words (B, T, E) and sentence (B, E) in DAMSM's space (a trained head)."""

    def __init__(self, cfg: DAMSMConfig):
        super().__init__()
        self.words = nn.Sequential(nn.Linear(cfg.text_dim, cfg.embed_dim), nn.GELU(),
                                   nn.Linear(cfg.embed_dim, cfg.embed_dim))  # fmt: skip
        self.sentence = nn.Sequential(nn.Linear(cfg.text_dim, cfg.embed_dim), nn.GELU(),
                                      nn.Linear(cfg.embed_dim, cfg.embed_dim))  # fmt: skip

    def forward(self, words, sentence):
        return self.words(words), self.sentence(sentence)


class DAMSM(nn.Module):
    """Both encoders and the matching losses: `losses(images, words, mask, sentence)` -> (L_w, L_s)."""

    def __init__(self, cfg: DAMSMConfig):
        super().__init__()
        self.cfg = cfg
        self.image_encoder = DAMSMImageEncoder(cfg)
        self.text_encoder = DAMSMTextEncoder(cfg)

    def losses(self, images, words, mask, sentence, same: torch.Tensor | None = None):
        regions, code = self.image_encoder(images)  # (B, E, r, r), (B, E)
        w, s = self.text_encoder(words, sentence)
        c = self.cfg
        lw = damsm_word_loss(w, mask, regions.flatten(2), c.gamma1, c.gamma2, c.gamma3, same)
        ls = damsm_sentence_loss(code, s, c.gamma3, same)
        return lw, ls

    def forward(self, images, words, mask, sentence, same=None):
        return self.losses(images, words, mask, sentence, same)
