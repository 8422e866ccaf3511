"""StackGAN (Zhang et al., 2017) on transformer sentence features.

Conditioning augmentation turns the sentence feature into a Gaussian (mu, logvar) and samples the condition c
from it (plus a KL term keeping it near N(0, I)). Stage I draws a low-resolution image from noise + c; stage II
encodes that image, joins c spatially, refines it through residual blocks and upsamples to the final resolution.
Each stage has a matching-aware discriminator. `train_stage: joint` trains both stages together (StackGAN++
style); `train_stage: stage2` loads a trained stage I from `stage1_checkpoint`, freezes it and trains stage II,
as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2i.nn import ConditioningAugmentation, LayoutInject, ResBlock, StageDiscriminator, UpBlock, WordPool, image_head


@dataclass
class LayoutFields:
    """The layout stage of a GAN generator (Obj-GAN-like; off by default): a LayoutNet (t2i.models.diffusion) gives
    each object word of the caption a box, its words are painted over their boxes into a `layout_channels` map, and
    every block of the generator adds a zero-initialised convolution of that map (t2i.nn.LayoutInject). Training
    paints the scenes' true boxes; sampling paints the predicted ones."""

    layout_channels: int = 0  # 0: no layout stage
    layout_width: int = 128  # the LayoutNet's size (must match train.layout_from's)
    layout_layers: int = 3
    layout_contextual: bool = False
    layout_from: str | None = None  # an export with a trained layout_net/ (e.g. checkpoints/shapes64/diffusion_layout)


def build_layout_net(cfg: LayoutFields):
    """The generator's LayoutNet, or None without a layout stage."""
    if cfg.layout_channels <= 0:
        return None
    from t2i.models.diffusion import LayoutNet

    return LayoutNet(cfg.text_dim, cfg.layout_channels, cfg.layout_width, cfg.layout_layers,
                     contextual=cfg.layout_contextual)  # fmt: skip


def layout_injections(cfg: LayoutFields, channels: list[int]) -> nn.ModuleList | None:
    """One LayoutInject per block output of the given widths, or None without a layout stage."""
    if cfg.layout_channels <= 0:
        return None
    return nn.ModuleList(LayoutInject(cfg.layout_channels, c) for c in channels)


def inject(injections, i: int, h: torch.Tensor, layout) -> torch.Tensor:
    return h if injections is None else injections[i](h, layout)


def generator_layout(G, words, mask, layout):
    """The map a generator reads: the one given (training: the true boxes), else the LayoutNet's prediction painted
    at the final resolution, else None (no layout stage)."""
    if layout is not None or G.layout_net is None:
        return layout
    if words is None or mask is None:
        raise ValueError("a generator with a layout stage needs the word features and mask to predict the layout")
    r = G.cfg.resolution
    return G.layout_net.layout(words, mask, r, r)


def generator_trainable(G) -> list:
    """G's parameters without its LayoutNet's box predictor (trained already and frozen: layout_from); the painting
    projections learn with the generator."""
    keep = ("layout_net.proj.", "layout_net.hproj.")
    return [p for n, p in G.named_parameters() if not n.startswith("layout_net.") or n.startswith(keep)]


@dataclass
class StackGANConfig(LayoutFields):
    """Architecture of both stages (defaults: CPU-sized for 64x64 Shapes, stage I at 32x32)."""

    resolution: int = 64  # final image size
    stage1_resolution: int = 32  # == resolution: stage I only
    text_dim: int = 384  # sentence feature size of the text encoder
    z_dim: int = 100
    cond_dim: int = 128  # CA output size (paper: 128)
    ngf: int = 32  # generator width: stage I starts at 4x4 x (8 * ngf)
    ndf: int = 32
    res_blocks: int = 2  # stage II residual blocks (paper: 4)
    cond_affine: bool = False  # also condition every BN on c (DF-GAN-like affine); the paper only concatenates
    # Standardise the sentence feature (parameter-free LayerNorm) before CA and D. MiniLM's is unit-norm, ~0.04 per
    # dimension: without this the text is ~1% of the CA noise at init and takes thousands of steps to be heard.
    sentence_norm: bool = True
    # Scale of CA's sampling noise (1 = the paper). At 1 the KL holds sigma near 1 while the caption spreads mu far
    # less: on the Shapes bundles a linear probe reads position from mu at 0.92 but from c at 0.36-0.56
    # (benchmarks/ca_probe.py), so the generator barely sees where to draw. 0 conditions on mu alone.
    ca_noise: float = 1.0
    d_projection: bool = False  # add a projection-discriminator term to D's conditional logit (training only)
    # G and D read the caption as the sentence vector plus a learned attention pooling of the word features
    # (t2i.nn.WordPool): the mean-pooled sentence vector all but loses left vs right
    word_pool: bool = False
    uncond_logits: bool = True  # discriminators also output an unconditional real/fake logit
    train_stage: str = "joint"  # "joint" or "stage2" (frozen stage I from stage1_checkpoint)
    stage1_checkpoint: str | None = None
    d_stage_resolutions: list = field(default_factory=list)  # filled in: one discriminator per stage

    def __post_init__(self):
        for r in (self.resolution, self.stage1_resolution):
            if r < 8 or r & (r - 1):
                raise ValueError(f"resolutions must be powers of two >= 8, got {r}")
        if self.stage1_resolution > self.resolution:
            raise ValueError("stage1_resolution must be <= resolution")
        if self.train_stage not in ("joint", "stage2"):
            raise ValueError(f"train_stage must be 'joint' or 'stage2', got {self.train_stage!r}")
        if self.train_stage == "stage2" and self.stage1_resolution == self.resolution:
            raise ValueError("train_stage 'stage2' needs stage1_resolution < resolution")
        self.d_stage_resolutions = [self.stage1_resolution] + (
            [self.resolution] if self.resolution != self.stage1_resolution else []
        )


@dataclass
class GenOutput:
    """What every GAN generator returns: images per stage (last = final), CA statistics, attention maps."""

    images: list  # [(B, 3, R_i, R_i)]
    mu: list  # [(B, C)] one per CA
    logvar: list
    attention: list = field(default_factory=list)  # AttnGAN: [(B, T, H_i, W_i)] per refinement stage


class Stage1Generator(nn.Module):
    """noise + c -> 4x4 x 8ngf -> x2 up-blocks -> stage-I image."""

    def __init__(self, cfg: StackGANConfig):
        super().__init__()
        self.ca = ConditioningAugmentation(cfg.text_dim, cfg.cond_dim, cfg.sentence_norm, cfg.ca_noise)
        c0 = cfg.ngf * 8
        self.fc = nn.Sequential(nn.Linear(cfg.z_dim + cfg.cond_dim, c0 * 16 * 2, bias=False),
                                nn.BatchNorm1d(c0 * 16 * 2), nn.GLU(dim=1))  # fmt: skip
        n_up = cfg.stage1_resolution.bit_length() - 1 - 2  # 4 -> stage1_resolution
        chans = [max(c0 // 2**i, 8) for i in range(n_up + 1)]
        cond = cfg.cond_dim if cfg.cond_affine else 0
        self.ups = nn.ModuleList(UpBlock(chans[i], chans[i + 1], cond) for i in range(n_up))
        self.head = image_head(chans[-1])
        self.c0 = c0
        self.lay = layout_injections(cfg, chans)  # at 4x4 and after every up-block

    def forward(self, z, sentence, generator=None, eps=None, layout=None):
        c, mu, logvar = self.ca(sentence, generator, eps)
        h = self.fc(torch.cat([z, c], dim=1)).view(z.shape[0], self.c0, 4, 4)  # (B, 8ngf, 4, 4)
        h = inject(self.lay, 0, h, layout)
        for i, up in enumerate(self.ups):
            h = inject(self.lay, i + 1, up(h, c), layout)
        return self.head(h), mu, logvar


class Stage2Generator(nn.Module):
    """stage-I image -> encoder (/4) -> [features, c] -> residual blocks -> up-blocks -> final image."""

    def __init__(self, cfg: StackGANConfig):
        super().__init__()
        self.ca = ConditioningAugmentation(cfg.text_dim, cfg.cond_dim, cfg.sentence_norm, cfg.ca_noise)
        g = cfg.ngf
        self.encode = nn.Sequential(
            nn.Conv2d(3, g, 3, 1, 1),
            nn.ReLU(True),
            nn.Conv2d(g, g * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(g * 2),
            nn.ReLU(True),
            nn.Conv2d(g * 2, g * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(g * 4),
            nn.ReLU(True),
        )  # fmt: skip  (B, 3, R1, R1) -> (B, 4ngf, R1/4, R1/4)
        self.joint = nn.Sequential(nn.Conv2d(g * 4 + cfg.cond_dim, g * 4, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(g * 4), nn.ReLU(True))  # fmt: skip
        cond = cfg.cond_dim if cfg.cond_affine else 0
        self.res = nn.ModuleList(ResBlock(g * 4, cond) for _ in range(cfg.res_blocks))
        n_up = (cfg.resolution // (cfg.stage1_resolution // 4)).bit_length() - 1
        chans = [max(g * 4 // 2**i, 8) for i in range(n_up + 1)]
        self.ups = nn.ModuleList(UpBlock(chans[i], chans[i + 1], cond) for i in range(n_up))
        self.head = image_head(chans[-1])
        self.lay = layout_injections(cfg, chans)  # after the joint conv and after every up-block

    def forward(self, image1, sentence, generator=None, eps=None, layout=None):
        c, mu, logvar = self.ca(sentence, generator, eps)
        h = self.encode(image1)  # (B, 4ngf, R1/4, R1/4)
        cmap = c[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
        h = inject(self.lay, 0, self.joint(torch.cat([h, cmap], dim=1)), layout)
        for block in self.res:
            h = block(h, c)
        for i, up in enumerate(self.ups):
            h = inject(self.lay, i + 1, up(h, c), layout)
        return self.head(h), mu, logvar


class StackGANGenerator(nn.Module):
    """Stage I (+ stage II when resolution > stage1_resolution)."""

    def __init__(self, cfg: StackGANConfig):
        super().__init__()
        self.cfg = cfg
        self.stage1 = Stage1Generator(cfg)
        self.stage2 = Stage2Generator(cfg) if cfg.resolution != cfg.stage1_resolution else None
        self.num_ca = 1 + (self.stage2 is not None)  # one conditioning augmentation per stage, as in the paper
        self.pool = WordPool(cfg.text_dim) if cfg.word_pool else None
        self.layout_net = build_layout_net(cfg)

    def forward(self, z, sentence, words=None, mask=None, generator=None, ca_eps=None, layout=None) -> GenOutput:
        """z (B, z_dim), sentence (B, D) -> GenOutput; words/mask are read only with word_pool or a layout stage
        (same call as AttnGAN). layout: the painted map to draw (training), else predicted from the words.

        ca_eps: optional [(B, cond_dim)] * num_ca CA noise; else drawn from `generator`."""
        eps = ca_eps or [None] * self.num_ca
        layout = generator_layout(self, words, mask, layout)
        if self.pool is not None:
            sentence = self.pool(sentence, words, mask)
        img1, mu1, lv1 = self.stage1(z, sentence, generator, eps[0], layout)
        if self.stage2 is None:
            return GenOutput([img1], [mu1], [lv1])
        img2, mu2, lv2 = self.stage2(img1, sentence, generator, eps[1], layout)
        return GenOutput([img1, img2], [mu1, mu2], [lv1, lv2])

    def trainable_parameters(self):
        """Stage II only when stage I is frozen (paper schedule), else everything (but a layout stage's frozen box
        predictor)."""
        if self.cfg.train_stage == "stage2":
            return list(self.stage2.parameters())
        return generator_trainable(self)


def build_discriminators(resolutions: list[int], text_dim: int, ndf: int, uncond: bool, sentence_norm: bool = False,
                         projection: bool = False, contrastive_dim: int = 0) -> nn.ModuleList:  # fmt: skip
    """One matching-aware discriminator per generator stage (contrastive_dim > 0: with XMC-GAN's contrastive heads)."""
    return nn.ModuleList(StageDiscriminator(r, text_dim, ndf, uncond=uncond, sentence_norm=sentence_norm,
                                            projection=projection, contrastive_dim=contrastive_dim)
                         for r in resolutions)  # fmt: skip


def build_stackgan(cfg: StackGANConfig, contrastive_dim: int = 0):
    """-> (generator, discriminators); in 'stage2' mode only stage II's discriminator is trained."""
    G = StackGANGenerator(cfg)
    d_res = cfg.d_stage_resolutions if cfg.train_stage == "joint" else [cfg.resolution]
    D = build_discriminators(d_res, cfg.text_dim, cfg.ndf, cfg.uncond_logits, cfg.sentence_norm, cfg.d_projection,
                             contrastive_dim)  # fmt: skip
    return G, D


def downsample_to(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Real images at a stage's resolution (area averaging)."""
    if images.shape[-1] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="area")
