"""Text-conditioned diffusion baseline: diffusers' UNet2DConditionModel cross-attending to the word features.

Training is DDPM (epsilon or v-prediction) with caption dropout, so one network learns both the conditional and the
unconditional score and classifier-free guidance works at sampling time. Sampling uses DDIM or DPM-Solver with a
chosen number of steps. With `autoencoder` set (a trained VQGAN stage 1), the UNet works on the autoencoder's
pre-quantization latents scaled to unit variance (latent diffusion, Rombach et al. 2022: 64x64x3 pixels -> 16x16x4
here) and the pipeline decodes through the VQ decoder, which snaps the latents to the codebook; without it, pixels.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from diffusers import (
    ConfigMixin,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    ModelMixin,  # noqa: F401  (diffusers finds a custom component's base class in its module: WordAdapter loads)
    UNet2DConditionModel,
    VQModel,
)
from diffusers.configuration_utils import register_to_config
from diffusers.utils.torch_utils import randn_tensor
from torch import nn


@dataclass
class DiffusionConfig:
    """UNet size, noise schedule and conditioning of the diffusion baseline."""

    resolution: int = 64
    in_channels: int = 3  # 3 for pixels; the autoencoder's latent channels for latent diffusion
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    cross_attention_dim: int = 384  # the text encoder's width (all-MiniLM-L6-v2: 384)
    norm_num_groups: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # cosine: better than linear at low resolution (Nichol & Dhariwal)
    prediction_type: str = "epsilon"  # or "v_prediction"
    caption_dropout: float = 0.1  # share of captions replaced by "" in training: the unconditional model for CFG
    sample_steps: int = 25  # the pipeline's default number of DDIM steps
    guidance_scale: float = 3.0  # the pipeline's default classifier-free guidance scale
    down_block_types: tuple[str, ...] = field(default=())
    up_block_types: tuple[str, ...] = field(default=())
    # Latent diffusion: a VQGAN stage-1 run folder or export (or a VQGAN/diffusion bundle holding one). `resolution`
    # and `in_channels` then describe the latent grid and are set from the autoencoder.
    autoencoder: str | None = None
    latent_scale: float = 0.0  # latents are multiplied by this before diffusion; 0: 1/std of 512 training latents
    # WordAdapter layers between the frozen text encoder and the UNet's cross-attention (0: none, the features go in
    # as they are). Meant to make word order easier to read; measured: no gain (docs/RESULTS.md, two-object scenes).
    word_adapter_layers: int = 0
    word_adapter_heads: int = 4
    # Min-SNR-gamma loss weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"):
    # each sample's MSE times min(SNR_t, gamma) / SNR_t (epsilon) or / (SNR_t + 1) (v), which moves weight from the
    # nearly clean timesteps to the noisy ones where the layout is decided; the paper uses gamma 5. 0: plain MSE.
    min_snr_gamma: float = 0.0
    # Token-level grounding of the cross-attention (TokenCompose, Wang et al. 2024, its token loss): the attention
    # maps of the words that name an object (colour, shape) are pulled into that object's box, so the UNet has to
    # bind each word to a place. Needs object boxes from the dataset (Shapes has them); rows without any are skipped.
    # The loss's weight next to the MSE; 0: off.
    grounding_weight: float = 0.0
    # Text -> layout -> image (Hong et al. 2018, Obj-GAN 2019: infer a layout from the caption, then draw it). With
    # layout_channels > 0 a LayoutNet predicts a box for each word that names an object and the UNet gets, as extra
    # input channels, each word's projected feature painted over its box. Training paints the dataset's boxes (Shapes
    # has them; t2i.data.shapes.object_mentions says which words name which object) and trains the predictor on them
    # beside the MSE (its loss times layout_weight, its own lr layout_lr); sampling paints the predicted boxes. The
    # unconditional branch of CFG gets an empty layout, as a dropped caption does in training. 0: off.
    layout_channels: int = 0
    layout_width: int = 128
    layout_layers: int = 3
    layout_weight: float = 1.0
    layout_lr: float = 1e-3
    # Paint, beside each word's own feature, the LayoutNet's contextual state at that word (a zero-initialised
    # projection, so a run fine-tuned from a bundle without it starts unchanged). A word feature of "red" is the same
    # whichever object it colours; the predictor's state has read the whole caption and can carry the object's full
    # identity into its box, which is what binds colour and shape to a place.
    layout_contextual: bool = False
    # The share of captioned training samples whose cross-attention reads the empty caption while the map keeps the
    # caption's layout: the UNet then has to draw the objects from the map alone, so it learns to trust the map over
    # the unplaced words (cross-attention binds words to places at chance). 0: off.
    layout_text_dropout: float = 0.0

    def __post_init__(self):
        n = len(self.block_out_channels)
        if not self.down_block_types:
            # Cross-attention at every level but the first (the full-resolution level is too costly on a CPU).
            self.down_block_types = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
        if not self.up_block_types:
            self.up_block_types = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.min_snr_gamma < 0:
            raise ValueError(f"min_snr_gamma must be >= 0 (0 = off), got {self.min_snr_gamma}")
        if self.grounding_weight < 0:
            raise ValueError(f"grounding_weight must be >= 0 (0 = off), got {self.grounding_weight}")
        if self.layout_channels < 0:
            raise ValueError(f"layout_channels must be >= 0 (0 = off), got {self.layout_channels}")
        if not 0.0 <= self.layout_text_dropout < 1.0:
            raise ValueError(f"layout_text_dropout must be in [0, 1), got {self.layout_text_dropout}")
        if (self.layout_contextual or self.layout_text_dropout) and self.layout_channels <= 0:
            raise ValueError("layout_contextual / layout_text_dropout need the layout stage (layout_channels > 0)")


def build_unet(cfg: DiffusionConfig) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=cfg.resolution,
        in_channels=cfg.in_channels + cfg.layout_channels,  # the layout map goes in beside the noisy input
        out_channels=cfg.in_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )


class WordAdapter(ModelMixin, ConfigMixin):
    """Order-aware refinement of the frozen text encoder's word features before the UNet's cross-attention.

    all-MiniLM-L6-v2's word features barely depend on word order: in "a small blue heart right of a large orange
    circle" and the same caption with "left", the object words' features have cosine similarity 0.98-0.99, and the
    sentence features of a caption and its mirror ("a large orange circle right of a small blue heart") 0.99. Which
    object goes where in a two-object caption is then hard to read from them. This adds a learned position embedding
    and `layers` pre-norm transformer blocks (self-attention over the caption's tokens, padding masked; MLP x2). The
    position table and each block's output projections start at zero, so a fresh adapter is the identity: it can be
    put in front of an already trained UNet (`train.init_from`) without changing what that UNet does.
    """

    @register_to_config
    def __init__(self, dim: int = 384, layers: int = 1, heads: int = 4, positions: int = 64):
        super().__init__()
        if dim % heads:
            raise ValueError(f"word adapter: dim {dim} is not divisible by heads {heads}")
        self.pos = nn.Parameter(torch.zeros(positions, dim))
        self.blocks = nn.ModuleList(_AdapterBlock(dim, heads) for _ in range(layers))

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """words (B, T, D), mask (B, T) True on real tokens -> (B, T, D)."""
        T = words.shape[1]
        if T > self.pos.shape[0]:
            raise ValueError(f"word adapter: {T} tokens, more than its {self.pos.shape[0]} positions")
        x = words + self.pos[:T].to(words.dtype)
        for b in self.blocks:
            x = b(x, mask)
        return x


class _AdapterBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        for m in (self.proj, self.fc2):  # residual branches start at zero: the block starts as the identity
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        keys = mask.bool()[:, None, None, :]  # (B, 1, 1, T): attend to real tokens only
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class LayoutNet(ModelMixin, ConfigMixin):
    """Caption -> layout, and layout -> the UNet's extra input channels.

    `predict`: a small transformer over the frozen text encoder's word features (projected to `width`, a learned
    position table, `layers` pre-norm blocks) gives each token the probability that it names an object and that
    object's box (x0, y0, x1, y1 in [0, 1]). Trained with BCE on the first and L1 on the box of the grounded tokens:
    L1's optimum is the conditional median, so where a caption allows several layouts ("A left of B": A in column 0
    or 1) the prediction lands on the likeliest one, not between two cells.
    `paint`: each token's feature projected to `channels`, times its weight (1 for a grounded token), spread over
    its box by area overlap with the cells of an h x w grid and summed: (B, channels, h, w). With `contextual`,
    the predictor's hidden state at the token, through its own projection (zero at first), is added to the feature.
    """

    # parameters a checkpoint from before they existed may lack (zero-initialised: they start as a no-op)
    new_parameters = ("hproj.",)
    grows_with = ("contextual",)  # the config switch that adds them

    @register_to_config
    def __init__(self, dim: int = 384, channels: int = 16, width: int = 128, layers: int = 3, heads: int = 4,
                 positions: int = 64, contextual: bool = False):  # fmt: skip
        super().__init__()
        if width % heads:
            raise ValueError(f"layout net: width {width} is not divisible by heads {heads}")
        self.inp = nn.Linear(dim, width)
        # a position table large enough to tell tokens apart from the first step: with BERT's 0.02 a predictor
        # over order-free word features sits at chance for hundreds of steps before it finds word order
        self.pos = nn.Parameter(torch.randn(positions, width) * 0.5)
        self.blocks = nn.ModuleList(_AdapterBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 5)  # grounded logit, then the box's four coordinates (logits)
        self.proj = nn.Linear(dim, channels)
        self.hproj = None
        if contextual:
            self.hproj = nn.Linear(width, channels)
            nn.init.zeros_(self.hproj.weight)
            nn.init.zeros_(self.hproj.bias)

    def predict(self, words: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """words (B, T, D), mask (B, T) -> (grounded logits (B, T), boxes (B, T, 4) in [0, 1], x0 <= x1, y0 <= y1)."""
        return self.predict_with_state(words, mask)[:2]

    def predict_with_state(self, words, mask):
        """`predict`'s (logits, boxes) and the hidden state they were read from, (B, T, width)."""
        T = words.shape[1]
        if T > self.pos.shape[0]:
            raise ValueError(f"layout net: {T} tokens, more than its {self.pos.shape[0]} positions")
        x = self.inp(words.to(self.inp.weight.dtype)) + self.pos[:T]
        for b in self.blocks:
            x = b(x, mask)
        h = self.norm(x)
        out = self.head(h)
        c = out[..., 1:].sigmoid()
        lo, hi = torch.minimum(c[..., :2], c[..., 2:]), torch.maximum(c[..., :2], c[..., 2:])
        boxes = torch.cat([lo, hi], -1)
        return out[..., 0].masked_fill(~mask.bool(), -30.0), boxes, h

    def loss(self, words, mask, boxes, valid, predicted=None) -> torch.Tensor:
        """BCE of the grounded logit over real tokens + L1 of the box over grounded tokens (0 where none are).
        predicted: `predict`'s (logits, boxes) when the caller has them already."""
        logit, pred = predicted if predicted is not None else self.predict(words, mask)
        m = mask.bool()
        bce = F.binary_cross_entropy_with_logits(logit[m].float(), valid[m].float())
        n = valid.sum()
        l1 = ((pred - boxes).abs().sum(-1) * valid).sum() / n.clamp(min=1) / 4
        return bce + l1

    def paint(self, words, boxes, weight, h: int, w: int, state=None, mask=None) -> torch.Tensor:
        """(B, T, D) words, (B, T, 4) boxes, (B, T) weights -> (B, channels, h, w). A contextual net adds the
        predictor's hidden state (B, T, width) through its projection: `state`, or computed from words and `mask`."""
        m = box_masks(boxes.float(), h, w) * weight.float().unsqueeze(-1)  # (B, T, h*w)
        f = self.proj(words.to(self.proj.weight.dtype)).float()  # (B, T, C)
        if self.hproj is not None:
            if state is None:
                if mask is None:
                    raise ValueError("a contextual layout net paints its hidden state: pass state= or mask=")
                state = self.predict_with_state(words, mask)[2]
            f = f + self.hproj(state.to(self.hproj.weight.dtype)).float()
        return torch.einsum("btq,btc->bcq", m, f).reshape(words.shape[0], -1, h, w).to(self.proj.weight.dtype)

    def layout(self, words, mask, h: int, w: int) -> torch.Tensor:
        """The painted map of the predicted layout (tokens with grounded probability > 0.5)."""
        logit, boxes, state = self.predict_with_state(words, mask)
        return self.paint(words, boxes, (logit > 0).to(boxes.dtype), h, w, state)


def build_layout_net(cfg: DiffusionConfig) -> LayoutNet | None:
    if cfg.layout_channels <= 0:
        return None
    return LayoutNet(cfg.cross_attention_dim, cfg.layout_channels, cfg.layout_width, cfg.layout_layers,
                     contextual=cfg.layout_contextual)  # fmt: skip


def build_word_adapter(cfg: DiffusionConfig) -> WordAdapter | None:
    if cfg.word_adapter_layers <= 0:
        return None
    return WordAdapter(cfg.cross_attention_dim, cfg.word_adapter_layers, cfg.word_adapter_heads)


def build_noise_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
    )


SAMPLERS = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler}


def drop_captions(captions: list[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Replace each caption by "" with probability p (the unconditional branch of classifier-free guidance)."""
    if p <= 0:
        return list(captions)
    keep = torch.rand(len(captions), generator=generator) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


def diffusion_loss(
    unet: UNet2DConditionModel,
    noise_scheduler: DDPMScheduler,
    x0: torch.Tensor,
    words: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | None = None,
    word_adapter: WordAdapter | None = None,
    min_snr_gamma: float = 0.0,
    layout: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDPM training loss: MSE between the UNet's output and the epsilon (or v) target at a random timestep.

    x0 (B, C, H, W) clean images or latents; words (B, T, D) text features; mask (B, T) True on real tokens.
    min_snr_gamma > 0 weights each sample's MSE by min(SNR_t, gamma) / SNR_t (epsilon) or / (SNR_t + 1) (v).
    layout (B, L, H, W): extra input channels beside the noisy x_t (a LayoutNet's painted map).
    """
    if word_adapter is not None:
        words = word_adapter(words, mask)
    B = x0.shape[0]
    # Drawn where the generator lives (the loop seeds a CPU one per step) and moved: the same noise on every device.
    gdev = generator.device if generator is not None else x0.device
    noise = randn_tensor(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(x0.device)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (B,), device=gdev, generator=generator)
    t = t.to(x0.device)
    xt = noise_scheduler.add_noise(x0, noise, t)  # (B, C, H, W)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(x0, noise, t)
    else:
        target = noise
    x_in = xt if layout is None else torch.cat([xt, layout.to(xt.dtype)], 1)
    pred = unet(x_in, t, encoder_hidden_states=words, encoder_attention_mask=mask).sample
    if not min_snr_gamma:
        return F.mse_loss(pred.float(), target.float())
    per = (pred.float() - target.float()).square().flatten(1).mean(1)  # (B,)
    ac = noise_scheduler.alphas_cumprod.to(x0.device)[t].float()
    snr = ac / (1 - ac)
    v = noise_scheduler.config.prediction_type == "v_prediction"
    weight = snr.clamp(max=min_snr_gamma) / (snr + 1 if v else snr)
    return (weight * per).mean()


class CrossAttentionRecorder:
    """An attention processor for the UNet's cross-attention layers (attn2) that also keeps their attention
    probabilities while `active`: `maps` collects one (B, heads, Q, T) tensor per layer call, Q the layer's h*w.

    The arithmetic is diffusers' plain AttnProcessor (explicit softmax, so the probabilities exist and carry
    gradients); while not active it records nothing and computes the same output."""

    def __init__(self):
        self.active = False
        self.maps: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError("CrossAttentionRecorder is for transformer cross-attention (3-D hidden states) only")
        B = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross and encoder_hidden_states is not None:
            context = attn.norm_encoder_hidden_states(context)
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], B)
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k, v = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, attention_mask)  # (B * heads, Q, T)
        if self.active:
            self.maps.append(probs.view(B, attn.heads, *probs.shape[1:]))
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def install_recorder(unet: UNet2DConditionModel) -> CrossAttentionRecorder:
    """Put one CrossAttentionRecorder on every cross-attention layer of `unet` (the others keep theirs)."""
    rec = CrossAttentionRecorder()
    procs = {k: (rec if k.endswith("attn2.processor") else v) for k, v in unet.attn_processors.items()}
    if not any(k.endswith("attn2.processor") for k in procs):
        raise ValueError("this UNet has no cross-attention layers to ground")
    unet.set_attn_processor(procs)
    return rec


def box_masks(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(..., 4) boxes (x0, y0, x1, y1) in [0, 1] -> (..., h * w): the share of each cell of an h x w grid that the
    box covers (area overlap, so a box that does not align with a coarse grid still gives a fair soft mask)."""

    def overlap(lo, hi, n):  # (...,) -> (..., n)
        edges = torch.arange(n + 1, device=boxes.device, dtype=boxes.dtype) / n
        a, b = edges[:-1], edges[1:]
        return ((torch.minimum(hi.unsqueeze(-1), b) - torch.maximum(lo.unsqueeze(-1), a)).clamp(min=0)) * n

    ys = overlap(boxes[..., 1], boxes[..., 3], h)  # (..., h)
    xs = overlap(boxes[..., 0], boxes[..., 2], w)  # (..., w)
    return (ys.unsqueeze(-1) * xs.unsqueeze(-2)).flatten(-2)


def grounding_loss(maps: list[torch.Tensor], boxes: torch.Tensor, valid: torch.Tensor, height: int, width: int):
    """TokenCompose's token loss over the recorded cross-attention maps.

    maps: per layer (B, heads, Q, T) attention probabilities, Q = h * w of that layer (its grid keeps the
    height:width ratio of the height x width input); boxes (B, T, 4): the box of the object token t names;
    valid (B, T): which tokens are grounded. Per layer and grounded token, the head-averaged map is normalised over
    the image and L = (1 - its mass inside the box)^2; the result is the mean over layers and grounded tokens
    (0 when there are none)."""
    n = valid.sum()
    if not maps or int(n) == 0:
        return boxes.new_zeros(())
    total = boxes.new_zeros(())
    for p in maps:
        Q = p.shape[2]
        h = max(1, round((Q * height / width) ** 0.5))
        w = Q // h
        if h * w != Q:
            raise ValueError(f"cannot lay {Q} attention queries on a grid of ratio {height}:{width}")
        a = p.float().mean(1).transpose(1, 2)  # (B, T, Q)
        a = a / a.sum(-1, keepdim=True).clamp(min=1e-12)
        inside = (a * box_masks(boxes.float(), h, w)).sum(-1)  # (B, T)
        total = total + ((1 - inside).square() * valid).sum() / n
    return total / len(maps)


def grounding_targets(tokenizer, captions: list[str], attributes: list, T: int, max_length: int, cache=None):
    """(boxes (B, T, 4), valid (B, T)) for grounding_loss: each token inside a word that names one object (its colour
    or shape, see t2i.data.shapes.object_mentions) gets that object's box. Tokens are the text encoder's own
    (same tokenizer, truncation and padding to T), found through the tokenizer's character offsets. `cache`, a dict,
    keeps each caption's answer (captions repeat every epoch)."""
    from t2i.data.shapes import object_box, object_mentions

    boxes, valid = torch.zeros(len(captions), T, 4), torch.zeros(len(captions), T, dtype=torch.bool)
    for b, (cap, attrs) in enumerate(zip(captions, attributes)):
        key = (cap, repr(attrs))
        hit = None if cache is None else cache.get(key)
        if hit is None:
            hit = []
            spans = object_mentions(cap, attrs) if cap else []
            if any(spans):
                enc = tokenizer(cap, truncation=True, max_length=max_length, return_offsets_mapping=True)
                for o, obj_spans in enumerate(spans):
                    box = object_box(attrs["objects"][o])
                    for t, (lo, hi) in enumerate(enc["offset_mapping"]):
                        if hi > lo and any(lo < e and hi > s for s, e in obj_spans):
                            hit.append((t, box))
            if cache is not None:
                cache[key] = hit
        for t, box in hit:
            if t < T:
                boxes[b, t] = torch.tensor(box)
                valid[b, t] = True
    return boxes, valid


class T2IDiffusionPipeline(DiffusionPipeline):
    """Caption -> images with classifier-free guidance; the sampling loop is written out in __call__."""

    model_cpu_offload_seq = "unet->vqvae"
    _optional_components = ["vqvae", "word_adapter", "layout_net"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler,
        text_encoder_name: str | None = None,
        max_length: int = 32,
        default_steps: int = 25,
        default_guidance: float = 3.0,
        vqvae: VQModel | None = None,
        latent_scale: float = 1.0,
        word_adapter: WordAdapter | None = None,
        text_layer: int = -1,
        layout_net: LayoutNet | None = None,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vqvae=vqvae, word_adapter=word_adapter,
                              layout_net=layout_net)  # fmt: skip
        # The frozen text encoder is shared by every family and not saved with the pipeline: only its name is.
        self.register_to_config(text_encoder_name=text_encoder_name, max_length=max_length,
                                default_steps=default_steps, default_guidance=default_guidance,
                                latent_scale=latent_scale, text_layer=int(text_layer))  # fmt: skip
        self._text_encoder = None

    family = "diffusion"

    @property
    def resolution(self) -> int:
        """Side of the images it returns (the autoencoder's, for latent diffusion)."""
        if self.vqvae is not None:
            return int(self.vqvae.config.sample_size)
        return int(self.unet.config.sample_size)

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            from t2i.pipelines import shared_text_encoder  # one encoder per process for every family

            self._text_encoder = shared_text_encoder(
                self.config.text_encoder_name, self.config.max_length, self.config.get("text_layer", -1)
            )
        return self._text_encoder

    def set_text_encoder(self, encoder) -> None:
        """Share an already loaded TextEncoder (apps load one for every family)."""
        self._text_encoder = encoder

    def use_sampler(self, name: str) -> None:
        """Swap the sampling scheduler ('ddim', 'dpm' or 'ddpm') keeping the training noise schedule."""
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
        self.scheduler = SAMPLERS[name].from_config(self.scheduler.config)

    @torch.no_grad()
    def __call__(
        self,
        captions: list[str] | str,
        num_images_per_caption: int = 1,
        seed: int = 0,
        batch_size: int = 64,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        text_features=None,
        negative_captions: list[str] | None = None,
        layout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(len(captions) * k, 3, R, R) images in [-1, 1], caption-major; the same seed gives the same images.

        Steps and guidance default to the values the pipeline was saved with (config default_steps/guidance).
        negative_captions (one per caption): guidance steers away from these instead of from the empty caption, as
        diffusers' negative_prompt does. layout (len(captions), L, R, R): a painted map to draw instead of the one
        the layout net infers (e.g. the true layout, `layout_net.paint`; benchmarks/layout_oracle.py)."""
        if isinstance(captions, str):
            captions = [captions]
        num_inference_steps = int(num_inference_steps or self.config.default_steps)
        guidance_scale = float(self.config.default_guidance if guidance_scale is None else guidance_scale)
        device = self.unet.device
        if text_features is None:
            text_features = self.text_encoder.encode(list(captions))
        words = text_features.words.repeat_interleave(num_images_per_caption, 0).to(device)
        mask = text_features.mask.repeat_interleave(num_images_per_caption, 0).to(device)
        if negative_captions is not None:
            if len(negative_captions) != len(captions):
                raise ValueError(f"{len(negative_captions)} negative captions for {len(captions)} captions: "
                                 "give one per caption")  # fmt: skip
            if guidance_scale == 1.0:
                raise ValueError("negative captions need guidance_scale != 1 (at 1 guidance is off)")
            neg = self.text_encoder.encode(list(negative_captions), cache=False)
            null = (neg.words.repeat_interleave(num_images_per_caption, 0).to(device),
                    neg.mask.repeat_interleave(num_images_per_caption, 0).to(device))  # fmt: skip
        elif guidance_scale != 1.0:
            e = self.text_encoder.encode([""]).to(device)
            null = (e.words.expand(words.shape[0], -1, -1), e.mask.expand(words.shape[0], -1))
        else:
            null = None
        generator = torch.Generator("cpu").manual_seed(seed)
        C, R = self.unet.config.out_channels, int(self.unet.config.sample_size)
        noise = randn_tensor((words.shape[0], C, R, R), generator=generator, dtype=self.unet.dtype)
        if layout is not None:
            if self.layout_net is None:
                raise ValueError("layout given, but this pipeline has no layout net (its UNet reads no layout map)")
            want = (len(captions), self.unet.config.in_channels - C, R, R)
            if tuple(layout.shape) != want:
                raise ValueError(f"layout of shape {tuple(layout.shape)}; this pipeline needs {want}")
            layout = layout.to(device, self.unet.dtype).repeat_interleave(num_images_per_caption, 0)
        elif self.layout_net is not None:
            layout = self.predict_layout(words, mask)
        out = []
        for i in range(0, words.shape[0], batch_size):
            sl = slice(i, i + batch_size)
            x = self._sample(noise[sl].to(device), words[sl], mask[sl], None if null is None else
                             (null[0][sl], null[1][sl]), num_inference_steps, guidance_scale, generator,
                             None if layout is None else layout[sl])  # fmt: skip
            if self.vqvae is not None:
                # Undo the scaling; decode() quantizes to the codebook first (force_not_quantize=False), as LDM does.
                x = self.vqvae.decode(x.to(self.vqvae.dtype) / self.config.latent_scale).sample
            out.append(x)
        return torch.cat(out).clamp(-1, 1).float().cpu()

    def predict_layout(self, words, mask) -> torch.Tensor:
        """(B, L, R, R): the layout net's painted map of the layout it infers from the caption."""
        R = int(self.unet.config.sample_size)
        lay = self.layout_net.layout(words.to(self.layout_net.dtype), mask, R, R)
        return lay.to(self.unet.dtype)

    def _sample(self, x, words, mask, null, steps: int, guidance_scale: float, generator=None,
                layout=None) -> torch.Tensor:  # fmt: skip
        """The reverse process for one batch: x (B, C, R, R) pure noise -> x0; null: the (words, mask) guidance
        steers away from, one row per image (the empty caption's, or negative captions'), or None for no guidance.
        layout (B, L, R, R): the conditional branch's extra input channels; the guidance branch gets an empty one."""
        self.scheduler.set_timesteps(steps, device=x.device)
        x = x * self.scheduler.init_noise_sigma
        if null is not None:
            # Unconditional and conditional halves in one UNet call; pad both to the same token length.
            T = max(words.shape[1], null[0].shape[1])
            cond_w, cond_m = _pad_tokens(words, mask, T)
            null_w, null_m = _pad_tokens(null[0], null[1], T)
            ctx, ctx_mask = torch.cat([null_w, cond_w]), torch.cat([null_m, cond_m])
        else:
            ctx, ctx_mask = words, mask
        if layout is not None and null is not None:
            layout = torch.cat([torch.zeros_like(layout), layout])
        if self.word_adapter is not None:  # once per batch: the caption side does not depend on the step
            ctx = self.word_adapter(ctx.to(self.word_adapter.dtype), ctx_mask).to(ctx.dtype)
        # Stochastic samplers (DDPM) draw their noise from the seeded generator too.
        extra = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            x_in = torch.cat([x, x]) if null is not None else x
            x_in = self.scheduler.scale_model_input(x_in, t)
            if layout is not None:
                x_in = torch.cat([x_in, layout], 1)
            pred = self.unet(x_in, t, encoder_hidden_states=ctx, encoder_attention_mask=ctx_mask).sample
            if null is not None:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)  # classifier-free guidance
            x = self.scheduler.step(pred, t, x, **extra).prev_sample
        return x


def _pad_tokens(words: torch.Tensor, mask: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (B, t, D) word features and their (B, t) mask to T tokens."""
    pad = T - words.shape[1]
    if pad == 0:
        return words, mask
    return F.pad(words, (0, 0, 0, pad)), F.pad(mask, (0, pad), value=False)


def build_pipeline(cfg: DiffusionConfig, text_encoder_name: str | None = None, max_length: int = 32, unet=None,
                   vqvae: VQModel | None = None, word_adapter: WordAdapter | None = None,
                   text_layer: int = -1, layout_net: LayoutNet | None = None):  # fmt: skip
    """A pipeline over `unet` (default: a fresh one from cfg) and a DDIM sampler over the training noise schedule;
    with `vqvae`, a latent-diffusion pipeline that decodes through it (cfg.latent_scale must then be set)."""
    sched = DDIMScheduler.from_config(build_noise_scheduler(cfg).config)
    if vqvae is not None and not cfg.latent_scale > 0:
        raise ValueError("latent diffusion needs cfg.latent_scale > 0 (the family measures it from the data)")
    return T2IDiffusionPipeline(unet if unet is not None else build_unet(cfg), sched, text_encoder_name, max_length,
                                cfg.sample_steps, cfg.guidance_scale, vqvae,
                                cfg.latent_scale if vqvae is not None else 1.0, word_adapter, text_layer,
                                layout_net)  # fmt: skip


def config_dict(cfg: DiffusionConfig) -> dict:
    return asdict(cfg)
