"""VQGAN baseline: a VQ autoencoder (diffusers' VQModel) trained with L1 + perceptual + patch-GAN losses, and a
text-conditioned transformer prior (transformers' GPT-2 with cross-attention to the word features) over its codes.

Stage 1 (autoencoder), as in taming-transformers: reconstruction L1 + a perceptual term on a fixed feature network
(offline: #4's evaluator features, or LPIPS when the user gives local weights) + hinge patch discriminator, weighted
by the adaptive weight ||grad nll|| / ||grad g_loss|| at the decoder's last layer, switched on after `disc_start`.
Dead codes (unused for `revive_after` steps) are re-seeded from encoder outputs of the current batch.
Stage 2 (prior): next-code cross-entropy given the caption, with caption dropout for classifier-free guidance.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin, VQModel
from diffusers.configuration_utils import register_to_config

# ---------------------------------------------------------------------------------------------------------------
# Stage 1: the autoencoder.


@dataclass
class VQGANConfig:
    """Autoencoder and loss settings (CPU-sized defaults: 64x64 -> 16x16 codes)."""

    resolution: int = 64
    block_out_channels: tuple[int, ...] = (64, 128, 128)  # len - 1 downsamplings: 64 -> 16
    layers_per_block: int = 1
    latent_channels: int = 64
    num_codes: int = 256
    norm_num_groups: int = 32
    mid_attention: bool = True  # self-attention in the bottleneck (taming has it; tiny test models skip it)
    beta: float = 0.25  # commitment weight (VQ-VAE)
    disc_channels: int = 64
    disc_layers: int = 3
    disc_start: int = 2000  # steps of pure reconstruction before the GAN term switches on
    disc_weight: float = 0.8
    perceptual_weight: float = 1.0
    revive_after: int = 200  # a code unused for this many steps is re-seeded from the batch
    # The codebook learns only through ||sg(z) - e||^2; under Adam every entry moves at most ~lr per step, too slow to
    # follow the encoder early on, and codes of similar inputs merge. A larger learning rate for it keeps up.
    codebook_lr_mult: float = 1.0

    @property
    def code_size(self) -> int:
        return self.resolution // 2 ** (len(self.block_out_channels) - 1)


def build_vqmodel(cfg: VQGANConfig) -> VQModel:
    n = len(cfg.block_out_channels)
    model = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        num_vq_embeddings=cfg.num_codes,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.resolution,
        mid_block_add_attention=cfg.mid_attention,
    )
    # diffusers' "legacy" quantizer loss puts beta on the codebook term (a taming-transformers bug); use VQ-VAE's:
    # ||sg(z) - e||^2 + beta * ||z - sg(e)||^2.
    model.quantize.legacy = False
    model.quantize.beta = cfg.beta
    return model


def load_autoencoder(path) -> VQModel:
    """A frozen VQ autoencoder from a VQGAN stage-1 run folder or export (vqmodel/), a VQGAN bundle (vqmodel/) or a
    latent-diffusion bundle (vqvae/), in float32 and eval mode."""
    from t2i.pipelines import resolve_checkpoint

    p = Path(path)
    repo = Path(__file__).resolve().parents[2]
    if not p.is_absolute() and not p.exists() and (repo / p).exists():
        p = repo / p  # recipes name bundled folders relative to the repository (checkpoints/shapes64/...)
    root = resolve_checkpoint(p)
    for sub in ("vqmodel", "vqvae"):
        if (root / sub / "config.json").is_file():
            vq = VQModel.from_pretrained(root / sub, local_files_only=True).float()
            vq.quantize.legacy = False
            return vq.eval().requires_grad_(False)
    raise ValueError(f"{root} holds no vqmodel/ (or vqvae/) folder: train configs/t2i/shapes_vqgan.yaml first")


def latent_side(model: VQModel) -> int:
    """Side of the autoencoder's latent / code grid (64x64 images and 3 levels -> 16)."""
    return model.config.sample_size // 2 ** (len(model.config.block_out_channels) - 1)


@dataclass
class QuantizeOutput:
    """Encoder output snapped to the codebook: quant (B, C, h, w), indices (B, h, w), VQ loss, perplexity."""

    quant: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    perplexity: torch.Tensor
    z: torch.Tensor  # pre-quantization latents (B, C, h, w), used to revive dead codes


def vq_encode(model: VQModel, x: torch.Tensor) -> QuantizeOutput:
    """Images (B, 3, H, W) in [-1, 1] -> quantized latents and code indices."""
    z = model.encode(x).latents  # (B, C, h, w), after quant_conv
    quant, loss, (_, _, idx) = model.quantize(z)
    B, _, h, w = z.shape
    idx = idx.view(B, h, w)
    counts = torch.bincount(idx.flatten(), minlength=model.config.num_vq_embeddings).float()
    p = counts / counts.sum()
    perplexity = torch.exp(-(p * torch.log(p + 1e-10)).sum())  # e^entropy: the effective number of codes in use
    return QuantizeOutput(quant, idx, loss, perplexity, z)


def vq_decode_indices(model: VQModel, indices: torch.Tensor) -> torch.Tensor:
    """Code indices (B, h, w) -> images (B, 3, H, W)."""
    B, h, w = indices.shape
    quant = model.quantize.get_codebook_entry(indices.flatten(), (B, h, w, model.config.latent_channels))
    return model.decode(quant, force_not_quantize=True).sample


@torch.no_grad()
def init_codebook(model: VQModel, x: torch.Tensor) -> None:
    """Seed the codebook with encoder outputs of a batch (data-dependent init).

    diffusers' default init is uniform(-1/K, 1/K): far smaller than the encoder's outputs, so every latent snaps to
    nearly the same code, the decoder sees a constant and the autoencoder collapses. Seeding from data avoids that.
    """
    z = model.encode(x).latents
    z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, C)
    K = model.quantize.embedding.weight.shape[0]
    pick = torch.randperm(z.shape[0])[:K] if z.shape[0] >= K else torch.randint(0, z.shape[0], (K,))
    model.quantize.embedding.weight.data.copy_(z[pick] + 1e-3 * torch.randn(K, z.shape[1], device=z.device))


class CodeUsage:
    """Tracks when each code was last used and re-seeds codes dead for `revive_after` steps."""

    def __init__(self, num_codes: int, revive_after: int):
        self.last_used = torch.zeros(num_codes, dtype=torch.long)
        self.revive_after = revive_after

    @torch.no_grad()
    def update(self, model: VQModel, out: QuantizeOutput, step: int) -> dict:
        used = torch.unique(out.indices.flatten()).cpu()
        self.last_used[used] = step
        dead = (step - self.last_used >= self.revive_after).nonzero().flatten()
        if len(dead):
            # Re-seed dead codes with random encoder outputs of this batch, so they land where the data is.
            z = out.z.permute(0, 2, 3, 1).reshape(-1, out.z.shape[1])
            pick = torch.randint(0, z.shape[0], (len(dead),))
            model.quantize.embedding.weight.data[dead.to(z.device)] = z[pick].to(model.quantize.embedding.weight)
            self.last_used[dead] = step
        return {"codebook_usage": len(used) / len(self.last_used), "revived_codes": len(dead)}


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming-transformers): a grid of real/fake logits over overlapping patches."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        seq = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = channels
        for i in range(1, layers):
            nxt = channels * min(2**i, 8)
            seq += [nn.Conv2d(ch, nxt, 4, 2, 1, bias=False), nn.BatchNorm2d(nxt), nn.LeakyReLU(0.2, True)]
            ch = nxt
        seq += [nn.Conv2d(ch, ch, 4, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.LeakyReLU(0.2, True)]
        seq += [nn.Conv2d(ch, 1, 4, 1, 1)]
        self.net = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 1, h', w')


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, scale: float) -> torch.Tensor:
    """taming-transformers' lambda = ||d nll / d w_last|| / (||d g_loss / d w_last|| + 1e-4), clamped, times scale."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-4)
    return torch.clamp(w, 0.0, 1e4).detach() * scale


def autoencoder_losses(
    model: VQModel,
    disc: PatchDiscriminator,
    x: torch.Tensor,
    cfg: VQGANConfig,
    step: int,
    perceptual=None,
) -> tuple[torch.Tensor, dict, torch.Tensor, QuantizeOutput]:
    """Generator-side loss of stage 1 and its logs; also the reconstruction (for the D step) and the codes."""
    q = vq_encode(model, x)
    xrec = model.decode(q.quant, force_not_quantize=True).sample  # (B, 3, H, W)
    rec = (x - xrec).abs().mean()
    p_loss = perceptual(x, xrec) if perceptual is not None and cfg.perceptual_weight > 0 else torch.zeros(())
    nll = rec + cfg.perceptual_weight * p_loss
    loss = nll + q.loss
    logs = {"rec_l1": rec.item(), "perceptual": float(p_loss.detach()), "vq": q.loss.item(),
            "perplexity": q.perplexity.item()}  # fmt: skip
    if step >= cfg.disc_start:
        g_loss = -disc(xrec).mean()  # hinge generator loss
        lam = adaptive_weight(nll, g_loss, model.decoder.conv_out.weight, cfg.disc_weight)
        loss = loss + lam * g_loss
        logs.update(g_loss=g_loss.item(), adaptive_weight=lam.item())
    return loss, logs, xrec, q


def discriminator_hinge_loss(disc: PatchDiscriminator, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss: mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))."""
    return 0.5 * (F.relu(1.0 - disc(real)).mean() + F.relu(1.0 + disc(fake.detach())).mean())


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: the text-conditioned prior over codes.


class CodePrior(ModelMixin, ConfigMixin):
    """GPT-2 over code indices (raster order) with cross-attention to projected word features.

    With `layout_channels` > 0 the prior also reads a painted layout map on the code grid (a LayoutNet's, see
    t2i.models.diffusion.LayoutNet): the map's cell i, through a projection that starts at zero, is added to the
    input embedding at position i, the input that predicts code i. So each code is predicted knowing what the layout
    puts in its own cell (text -> layout -> image, Hong et al. 2018), not only what cross-attention reads.

    With `layout_attention` as well, every block also attends over the whole map (`LayoutAttention`, one token per
    cell with a learnt position, a residual branch whose output projection starts at zero): a causal prior reading
    only cell i cannot see where a box it is entering ends, or where the other object's box lies below it."""

    # parameters a prior from before the layout existed lacks (zero-initialised: they start as a no-op)
    new_parameters = ("layout_proj.", "layout_attn.", "layout_tok.", "layout_pos")
    grows_with = ("layout_channels", "layout_attention")

    @register_to_config
    def __init__(
        self,
        num_codes: int = 256,
        seq_len: int = 256,
        text_dim: int = 384,
        n_embd: int = 256,
        n_layer: int = 6,
        n_head: int = 8,
        dropout: float = 0.1,
        layout_channels: int = 0,
        layout_attention: bool = False,
    ):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        if layout_channels < 0:
            raise ValueError(f"layout_channels must be >= 0 (0 = no layout map), got {layout_channels}")
        if layout_attention and not layout_channels:
            raise ValueError("layout_attention reads the layout map: it needs layout_channels > 0")

        self.bos = num_codes  # one extra token starts every sequence
        gcfg = GPT2Config(
            vocab_size=num_codes + 1,
            n_positions=seq_len + 1,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            add_cross_attention=True,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            bos_token_id=num_codes,
            eos_token_id=num_codes,
            tie_word_embeddings=False,  # safetensors refuses shared tensors; the prior is small enough untied
        )
        self.gpt = GPT2LMHeadModel(gcfg)
        self.text_proj = nn.Linear(text_dim, n_embd)
        self.layout_proj = None
        if layout_channels:
            self.layout_proj = nn.Linear(layout_channels, n_embd)
            nn.init.zeros_(self.layout_proj.weight)
            nn.init.zeros_(self.layout_proj.bias)
        self.layout_attn = None
        if layout_attention:
            self.layout_tok = nn.Linear(layout_channels, n_embd)
            self.layout_pos = nn.Parameter(torch.randn(seq_len, n_embd) * 0.02)
            self.layout_attn = nn.ModuleList(LayoutAttention(n_embd, n_head) for _ in range(n_layer))
            for block, attn in zip(self.gpt.transformer.h, self.layout_attn):
                # a bound method: deepcopy (EMA, export) rebinds it to the copy's own LayoutAttention
                block.register_forward_hook(attn.after_block)

    @contextlib.contextmanager
    def reading(self, layout_seq: torch.Tensor | None):
        """While inside, the blocks' layout attention reads `layout_seq` (B, L, C) (a no-op without it)."""
        if self.layout_attn is None or layout_seq is None:
            yield
            return
        w = self.layout_tok.weight
        tokens = self.layout_tok(layout_seq.to(w.dtype)) + self.layout_pos.to(w.dtype)
        for attn in self.layout_attn:
            attn.ctx, attn.cache = tokens, {}
        try:
            yield
        finally:
            for attn in self.layout_attn:
                attn.ctx = attn.cache = None

    def layout_sequence(self, layout: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) painted map on the code grid -> (B, h*w, C) in raster order, checked against this prior."""
        if self.layout_proj is None:
            raise ValueError("layout given, but this prior reads no layout map (layout_channels is 0)")
        want = (self.config.layout_channels, self.config.seq_len)
        if layout.dim() != 4 or (layout.shape[1], layout.shape[2] * layout.shape[3]) != want:
            raise ValueError(f"layout of shape {tuple(layout.shape)}; this prior needs (B, {want[0]}, h, w) with "
                             f"h*w = {want[1]}")  # fmt: skip
        return layout.flatten(2).transpose(1, 2)

    def embed(self, codes: torch.Tensor, layout_seq: torch.Tensor | None, start: int = 0) -> torch.Tensor:
        """Input embeddings of `codes` (B, n) at positions start..start+n-1, plus the layout cells they predict."""
        e = self.gpt.transformer.wte(codes)
        if layout_seq is not None:
            cells = layout_seq[:, start : start + codes.shape[1]]
            e = e + self.layout_proj(cells.to(self.layout_proj.weight.dtype)).to(e.dtype)
        return e

    def forward(self, codes: torch.Tensor, words: torch.Tensor, mask: torch.Tensor, past_key_values=None,
                layout: torch.Tensor | None = None):  # fmt: skip
        """codes (B, L) input tokens (BOS first); words (B, T, D_text); mask (B, T); layout (B, C, h, w) a painted
        map when the prior reads one -> GPT-2 output (logits)."""
        with warnings.catch_warnings():
            # transformers 5.x renames the KV-cache argument and warns on every decoding step; the name used here
            # is still accepted throughout the supported range.
            warnings.simplefilter("ignore", FutureWarning)
            seq = None if layout is None else self.layout_sequence(layout)
            inputs = {"input_ids": codes} if seq is None else {"inputs_embeds": self.embed(codes, seq)}
            with self.reading(seq):
                return self.gpt(
                    **inputs,
                    encoder_hidden_states=self.text_proj(words),
                    encoder_attention_mask=mask.long(),
                    past_key_values=past_key_values,
                    use_cache=past_key_values is not None or not self.training,
                )

    def loss(self, indices: torch.Tensor, words: torch.Tensor, mask: torch.Tensor, layout=None) -> torch.Tensor:
        """Next-code cross-entropy. indices (B, h, w) from the autoencoder."""
        return prior_loss(self, indices, words, mask, layout)


class LayoutAttention(nn.Module):
    """h + W_o attention(LN(h) -> the layout map's tokens), W_o zero at the start: a prior given this branch draws
    as it did until training finds a use for the map (the gated cross-attention of Flamingo, ControlNet's zero
    init). Queries are each position's; keys and values the map's cells, all of them (not causal: the map is known
    before the first code)."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
        self.n_head = n_head
        self.ln = nn.LayerNorm(n_embd)
        self.ln_ctx = nn.LayerNorm(n_embd)
        self.q = nn.Linear(n_embd, n_embd)
        self.kv = nn.Linear(n_embd, 2 * n_embd)
        self.out = nn.Linear(n_embd, n_embd)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.ctx = self.cache = None  # the map's tokens (B, L, D) and its keys/values while CodePrior.reading

    def after_block(self, module, args, output):
        """Forward hook on the GPT-2 block this branch follows (a no-op while no map is being read)."""
        if self.ctx is None:
            return output
        if isinstance(output, tuple):  # transformers versions whose blocks return (hidden, ...)
            return (self(output[0], self.ctx, self.cache),) + tuple(output[1:])
        return self(output, self.ctx, self.cache)

    def forward(self, h: torch.Tensor, ctx: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """h (B, n, D) the block's output; ctx (B, L, D) the map's tokens; cache: a dict kept while one map is read
        (the keys and values are computed once, not at every decoding step)."""
        B, n, D = h.shape
        split = lambda x: x.view(B, x.shape[1], self.n_head, D // self.n_head).transpose(1, 2)  # noqa: E731
        q = split(self.q(self.ln(h)))
        kv = None if cache is None else cache.get("kv")
        if kv is None:
            kv = tuple(split(x) for x in self.kv(self.ln_ctx(ctx)).chunk(2, -1))
            if cache is not None:
                cache["kv"] = kv
        k, v = kv
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, n, D)
        return h + self.out(a)


def prior_loss(prior, indices: torch.Tensor, words: torch.Tensor, mask: torch.Tensor, layout=None) -> torch.Tensor:
    """Next-code cross-entropy through `prior`'s forward (also when DDP-wrapped, so gradients are synchronised)."""
    B = indices.shape[0]
    target = indices.view(B, -1)  # (B, L)
    bos = (prior.module if hasattr(prior, "module") else prior).bos
    inp = torch.cat([torch.full((B, 1), bos, device=target.device, dtype=target.dtype), target[:, :-1]], 1)
    logits = prior(inp, words, mask, layout=layout).logits  # (B, L, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering of (B, V) logits (filtered entries -> -inf)."""
    logits = logits / max(temperature, 1e-5)
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass of the tokens before it already reaches top_p (the first token always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def sample_codes(
    prior: CodePrior,
    words: torch.Tensor,
    mask: torch.Tensor,
    null=None,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    layout: torch.Tensor | None = None,
) -> torch.Tensor:
    """Autoregressive sampling with a KV cache -> code indices (B, L). With `null` (the empty caption's features)
    and guidance_scale != 1 the logits are guided: uncond + s * (cond - uncond). layout (B, C, h, w): the painted
    map a layout prior reads; the guidance branch gets an empty one, as a dropped caption does in training."""
    B, L = words.shape[0], prior.config.seq_len
    lay = None if layout is None else prior.layout_sequence(layout)
    guided = null is not None  # both branches run; scale 1 then reproduces the conditional logits exactly
    if guided:
        T = max(words.shape[1], null.words.shape[1])
        pad = lambda w, m: (F.pad(w, (0, 0, 0, T - w.shape[1])), F.pad(m, (0, T - m.shape[1]), value=False))  # noqa: E731
        cw, cm = pad(words, mask)
        nw, nm = pad(null.words.expand(B, -1, -1), null.mask.expand(B, -1))
        words, mask = torch.cat([cw, nw]), torch.cat([cm, nm])
        lay = None if lay is None else torch.cat([lay, torch.zeros_like(lay)])
    tok = torch.full((words.shape[0], 1), prior.bos, dtype=torch.long, device=words.device)
    past, out = None, []
    ctx = prior.text_proj(words)
    with prior.reading(lay), warnings.catch_warnings():  # the map's keys and values once, for every step
        warnings.simplefilter("ignore", FutureWarning)  # the KV-cache argument's rename, as in CodePrior.forward
        for t in range(L):
            o = prior.gpt(inputs_embeds=prior.embed(tok, lay, t), encoder_hidden_states=ctx,
                          encoder_attention_mask=mask.long(), past_key_values=past, use_cache=True)  # fmt: skip
            past = o.past_key_values
            logits = o.logits[:, -1].float()  # (B or 2B, V)
            if guided:
                cond, uncond = logits.chunk(2)
                logits = uncond + guidance_scale * (cond - uncond)
            logits = filter_logits(logits[:, : prior.bos], temperature, top_k, top_p)  # BOS is never sampled
            nxt = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator).to(words.device)  # (B, 1)
            out.append(nxt)
            tok = torch.cat([nxt, nxt]) if guided else nxt
    return torch.cat(out, 1)  # (B, L)


# ---------------------------------------------------------------------------------------------------------------
# Inference pipeline.


class VQGANPipeline:
    """Caption -> codes (prior) -> images (decoder); call-only, like every family's pipeline."""

    family = "vqgan"

    # What a call without sampling arguments uses; save_pretrained stores them, so a bundle carries its tuned values.
    DEFAULT_SAMPLING = {"guidance_scale": 1.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}

    def __init__(self, vqmodel: VQModel, prior: CodePrior, text_encoder_name: str | None = None, max_length: int = 32,
                 sampling: dict | None = None, text_layer: int = -1, layout_net=None):  # fmt: skip
        self.vqmodel = vqmodel.eval()
        self.prior = prior.eval()
        # text -> layout -> codes: the LayoutNet (t2i.models.diffusion) whose painted map the prior reads
        if (layout_net is None) != (prior.layout_proj is None):
            raise ValueError("a prior that reads a layout map needs its layout net, and only such a prior takes one")
        self.layout_net = None if layout_net is None else layout_net.eval()
        self.text_encoder_name = text_encoder_name
        self.max_length = max_length
        self.text_layer = int(text_layer)
        unknown = set(sampling or {}) - set(self.DEFAULT_SAMPLING)
        if unknown:
            raise ValueError(f"unknown sampling settings {sorted(unknown)}; known: {sorted(self.DEFAULT_SAMPLING)}")
        self.sampling = {**self.DEFAULT_SAMPLING, **(sampling or {})}
        self._text_encoder = None

    @property
    def resolution(self) -> int:
        return int(self.vqmodel.config.sample_size)

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            from t2i.pipelines import shared_text_encoder  # one encoder per process for every family

            self._text_encoder = shared_text_encoder(self.text_encoder_name, self.max_length, self.text_layer)
        return self._text_encoder

    def set_text_encoder(self, encoder) -> None:
        self._text_encoder = encoder

    def to(self, device) -> VQGANPipeline:
        self.vqmodel.to(device)
        self.prior.to(device)
        if self.layout_net is not None:
            self.layout_net.to(device)
        return self

    @property
    def code_side(self) -> int:
        return int(round(self.prior.config.seq_len**0.5))

    def predict_layout(self, words, mask) -> torch.Tensor:
        """(B, C, h, w): the layout net's painted map, on the code grid, of the layout it infers from the caption."""
        side = self.code_side
        return self.layout_net.layout(words.to(self.layout_net.dtype), mask, side, side).float()

    @torch.no_grad()
    def __call__(
        self,
        captions: list[str] | str,
        num_images_per_caption: int = 1,
        seed: int = 0,
        batch_size: int = 64,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        layout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(len(captions) * k, 3, R, R) in [-1, 1], caption-major; the same seed gives the same images.

        Sampling settings left as None take the pipeline's saved defaults (`self.sampling`). layout
        (len(captions), C, h, w): a painted map on the code grid to draw instead of the one the layout net infers
        (e.g. the true layout, `layout_net.paint`; benchmarks/layout_oracle.py)."""
        if isinstance(captions, str):
            captions = [captions]
        s = self.sampling
        guidance_scale = float(s["guidance_scale"] if guidance_scale is None else guidance_scale)
        temperature = float(s["temperature"] if temperature is None else temperature)
        top_k = int(s["top_k"] if top_k is None else top_k)
        top_p = float(s["top_p"] if top_p is None else top_p)
        device = next(self.prior.parameters()).device
        f = self.text_encoder.encode(list(captions)).to(device)
        words = f.words.repeat_interleave(num_images_per_caption, 0)
        mask = f.mask.repeat_interleave(num_images_per_caption, 0)
        null = self.text_encoder.encode([""]).to(device) if guidance_scale != 1.0 else None
        g = torch.Generator("cpu").manual_seed(seed)
        side = self.code_side
        if layout is not None:
            if self.layout_net is None:
                raise ValueError("layout given, but this pipeline has no layout net (its prior reads no layout map)")
            want = (len(captions), self.prior.config.layout_channels, side, side)
            if tuple(layout.shape) != want:
                raise ValueError(f"layout of shape {tuple(layout.shape)}; this pipeline needs {want}")
            layout = layout.to(device, torch.float32).repeat_interleave(num_images_per_caption, 0)
        elif self.layout_net is not None:
            layout = self.predict_layout(words, mask)
        out = []
        for i in range(0, words.shape[0], batch_size):
            sl = slice(i, i + batch_size)
            codes = sample_codes(self.prior, words[sl], mask[sl], null, guidance_scale, temperature, top_k, top_p, g,
                                 None if layout is None else layout[sl])  # fmt: skip
            out.append(vq_decode_indices(self.vqmodel, codes.view(-1, side, side)))
        return torch.cat(out).clamp(-1, 1).float().cpu()

    def save_pretrained(self, path) -> None:
        path = Path(path)
        self.vqmodel.save_pretrained(path / "vqmodel")
        self.prior.save_pretrained(path / "prior")
        if self.layout_net is not None:
            self.layout_net.save_pretrained(path / "layout_net")
        meta = {"family": "vqgan", "text_encoder_name": self.text_encoder_name, "max_length": self.max_length,
                "sampling": self.sampling, "text_layer": self.text_layer}  # fmt: skip
        (path / "pipeline.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path) -> VQGANPipeline:
        path = Path(path)
        meta = json.loads((path / "pipeline.json").read_text())
        # Bundles store fp16 weights; sampling runs in float32 (fp16 crawls on a CPU).
        vq = VQModel.from_pretrained(path / "vqmodel", local_files_only=True).float()
        vq.quantize.legacy = False
        prior = CodePrior.from_pretrained(path / "prior", local_files_only=True).float()
        layout = None
        if (path / "layout_net").is_dir():
            from t2i.models.diffusion import LayoutNet

            layout = LayoutNet.from_pretrained(path / "layout_net", local_files_only=True).float()
        return cls(vq, prior, meta.get("text_encoder_name"), meta.get("max_length", 32), meta.get("sampling"),
                   meta.get("text_layer", -1), layout)  # fmt: skip
