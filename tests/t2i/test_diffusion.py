import pytest
import torch

from t2i.models.diffusion import (
    DiffusionConfig,
    T2IDiffusionPipeline,
    build_noise_scheduler,
    build_pipeline,
    diffusion_loss,
    drop_captions,
)


def tiny_cfg(**kw):
    return DiffusionConfig(resolution=8, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4, **kw)


@pytest.fixture
def pipe(text_encoder):
    torch.manual_seed(0)
    p = build_pipeline(tiny_cfg())
    p.set_text_encoder(text_encoder)
    p.set_progress_bar_config(disable=True)
    return p


def test_sample_shape_range_and_seed(pipe):
    a = pipe(["a red circle", "a blue star"], num_images_per_caption=2, seed=3, num_inference_steps=3)
    assert a.shape == (4, 3, 8, 8) and a.min() >= -1 and a.max() <= 1
    b = pipe(["a red circle", "a blue star"], num_images_per_caption=2, seed=3, num_inference_steps=3)
    assert torch.equal(a, b)
    c = pipe(["a red circle", "a blue star"], num_images_per_caption=2, seed=4, num_inference_steps=3)
    assert not torch.equal(a, c)
    # Batching does not change the images: the noise is drawn once for all captions from the seed.
    d = pipe(["a red circle", "a blue star"], num_images_per_caption=2, seed=3, num_inference_steps=3, batch_size=1)
    assert torch.allclose(a, d, atol=1e-5)


def test_guidance_scale_one_equals_conditional(pipe, text_encoder):
    """CFG with scale 1: uncond + 1 * (cond - uncond) == cond, so the guided path equals the conditional one."""
    f = text_encoder.encode(["a small red circle in the top left corner"])
    e = text_encoder.encode([""])
    null = (e.words, e.mask)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    guided = pipe._sample(x.clone(), f.words, f.mask, null, steps=4, guidance_scale=1.0)
    cond = pipe._sample(x.clone(), f.words, f.mask, None, steps=4, guidance_scale=1.0)
    assert torch.allclose(guided, cond, atol=1e-5)
    strong = pipe._sample(x.clone(), f.words, f.mask, null, steps=4, guidance_scale=5.0)
    assert not torch.allclose(strong, cond, atol=1e-4)


def test_negative_captions_replace_the_empty_caption_in_guidance(pipe):
    caps = ["a red circle left of a blue star", "a big green heart"]
    kw = dict(seed=1, num_inference_steps=3, guidance_scale=4.0)
    plain = pipe(caps, 2, **kw)
    # The empty caption as every negative is plain classifier-free guidance, image for image.
    assert torch.allclose(pipe(caps, 2, negative_captions=["", ""], **kw), plain, atol=1e-5)
    neg = pipe(caps, 2, negative_captions=["a red circle right of a blue star", ""], **kw)
    assert not torch.allclose(neg[:2], plain[:2], atol=1e-4)  # the first caption's two images move
    assert torch.allclose(neg[2:], plain[2:], atol=1e-5)  # the second's negative is "": unchanged
    with pytest.raises(ValueError, match="one per caption"):
        pipe(caps, negative_captions=["x"], **kw)
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe(caps, negative_captions=["x", "y"], seed=1, num_inference_steps=3, guidance_scale=1.0)


def test_sample_cli_negative_captions(pipe, tmp_path, text_encoder, capsys):
    from PIL import Image

    import t2i.pipelines
    from t2i.cli import main

    t2i.pipelines._ENCODERS[(None, 32, -1)] = text_encoder
    pipe.save_pretrained(tmp_path / "diff")
    out = tmp_path / "grid.png"
    base = ["sample", str(tmp_path / "diff"), "--caption", "a red circle", "--caption", "a blue star", "-n", "2"]
    assert main(base + ["--negative", "a green heart", "--out", str(out)]) == 0
    assert Image.open(out).size == (2 * 10 + 2, 2 * 10 + 2)
    assert main(base + ["--negative", "x", "--negative", "y", "--negative", "z", "--out", str(out)]) == 2
    assert "3 --negative for 2 --caption" in capsys.readouterr().err
    # Not a diffusion checkpoint: a clear refusal, nothing written.
    from t2i.models.stackgan import StackGANConfig, StackGANGenerator
    from t2i.pipelines import export_generator

    cfg = StackGANConfig(resolution=16, stage1_resolution=8, z_dim=4, cond_dim=4, ngf=4, ndf=4, res_blocks=1)
    stack = export_generator(tmp_path / "stack", "stackgan", StackGANGenerator(cfg).eval(), cfg)
    other = tmp_path / "other.png"
    assert main(["sample", str(stack), "--caption", "a gray heart", "--negative", "x", "--out", str(other)]) == 2
    assert "--negative is for diffusion" in capsys.readouterr().err and not other.exists()


def test_save_load_round_trip_offline(pipe, tmp_path, text_encoder):
    before = pipe(["a green heart"], seed=1, num_inference_steps=3)
    pipe.save_pretrained(tmp_path / "diff")
    assert (tmp_path / "diff" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = T2IDiffusionPipeline.from_pretrained(tmp_path / "diff", local_files_only=True)
    loaded.set_text_encoder(text_encoder)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.resolution == 8
    after = loaded(["a green heart"], seed=1, num_inference_steps=3)
    assert torch.equal(before, after)


def test_v_prediction_target_matches_hand_computation():
    sched = build_noise_scheduler(tiny_cfg(prediction_type="v_prediction"))
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([10, 500])
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    assert torch.allclose(sched.get_velocity(x0, eps, t), v, atol=1e-5)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    assert torch.allclose(sched.add_noise(x0, eps, t), xt, atol=1e-5)


def test_two_training_steps_reduce_loss_on_a_fixed_batch(text_encoder):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    pipe = build_pipeline(cfg)
    sched = build_noise_scheduler(cfg)
    f = text_encoder.encode(["a red square", "a blue circle"])
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    opt = torch.optim.AdamW(pipe.unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss = diffusion_loss(pipe.unet, sched, x0, f.words, f.mask, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses  # same noise + timesteps each step: the UNet must fit it


def test_caption_dropout_and_config_errors():
    caps = [f"caption {i}" for i in range(1000)]
    dropped = drop_captions(caps, 0.1, torch.Generator().manual_seed(0))
    n = sum(c == "" for c in dropped)
    assert 60 < n < 140 and all(c in ("", o) for c, o in zip(dropped, caps))
    assert drop_captions(caps, 0.0) == caps
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionConfig(prediction_type="x0")
    with pytest.raises(ValueError, match="sampler"):
        build_pipeline(tiny_cfg()).use_sampler("euler-magic")


def test_word_adapter_starts_as_the_identity_and_then_reads_word_order():
    from t2i.models.diffusion import WordAdapter

    torch.manual_seed(0)
    a = WordAdapter(dim=16, layers=2, heads=4, positions=8)
    x = torch.randn(3, 6, 16)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    assert torch.equal(a(x, mask), x)  # fresh: exactly the identity (safe in front of a trained UNet)
    for p in a.parameters():
        torch.nn.init.normal_(p, std=0.3)
    y = a(x, mask)
    assert not torch.allclose(y, x)
    # Real tokens do not read padding: changing the padded features leaves them as they were.
    x2 = x.clone()
    x2[1, 4:] = torch.randn(2, 16)
    assert torch.allclose(a(x2, mask)[1, :4], y[1, :4], atol=1e-6)
    # Order-aware: swapping two tokens does not just swap their outputs (MiniLM's features nearly do that).
    perm = torch.tensor([1, 0, 2, 3, 4, 5])
    assert not torch.allclose(a(x[:, perm], mask)[:, perm], y, atol=1e-3)
    with pytest.raises(ValueError, match="more than its 8 positions"):
        a(torch.randn(1, 9, 16), torch.ones(1, 9, dtype=torch.bool))


def test_pipeline_with_word_adapter_round_trip_and_old_pipelines_still_load(tmp_path, text_encoder):
    from t2i.models.diffusion import build_word_adapter

    cfg = tiny_cfg(word_adapter_layers=1)
    torch.manual_seed(0)
    adapter = build_word_adapter(cfg)
    for p in adapter.parameters():  # a trained-looking adapter, so it matters what is saved
        torch.nn.init.normal_(p, std=0.1)
    pipe = build_pipeline(cfg, word_adapter=adapter)
    pipe.set_text_encoder(text_encoder)
    pipe.set_progress_bar_config(disable=True)
    before = pipe(["a green heart left of a red star"], seed=1, num_inference_steps=3)
    pipe.save_pretrained(tmp_path / "diff")
    assert (tmp_path / "diff/word_adapter/diffusion_pytorch_model.safetensors").is_file()
    loaded = T2IDiffusionPipeline.from_pretrained(tmp_path / "diff", local_files_only=True)
    loaded.set_text_encoder(text_encoder)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.word_adapter is not None
    assert torch.equal(before, loaded(["a green heart left of a red star"], seed=1, num_inference_steps=3))
    no_adapter = build_pipeline(cfg, unet=pipe.unet)
    no_adapter.set_text_encoder(text_encoder)
    no_adapter.set_progress_bar_config(disable=True)
    assert not torch.equal(before, no_adapter(["a green heart left of a red star"], seed=1, num_inference_steps=3))
    no_adapter.save_pretrained(tmp_path / "plain")
    assert T2IDiffusionPipeline.from_pretrained(tmp_path / "plain", local_files_only=True).word_adapter is None


def test_text_layer_round_trip_and_older_pipelines_read_the_last_layer(tmp_path):
    import json

    pipe = build_pipeline(tiny_cfg(), text_layer=3)
    pipe.save_pretrained(tmp_path / "diff")
    loaded = T2IDiffusionPipeline.from_pretrained(tmp_path / "diff", local_files_only=True)
    assert loaded.config.text_layer == 3 and loaded.text_encoder.layer == 3
    index = tmp_path / "diff/model_index.json"  # a pipeline saved before the option: no text_layer key
    cfg = json.loads(index.read_text())
    del cfg["text_layer"]
    index.write_text(json.dumps(cfg))
    old = T2IDiffusionPipeline.from_pretrained(tmp_path / "diff", local_files_only=True)
    assert old.text_encoder.layer == -1


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weighting_matches_hand_computation(prediction_type, text_encoder):
    """Each sample's MSE times min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v), from the same noise and t."""
    from diffusers.utils.torch_utils import randn_tensor

    torch.manual_seed(0)
    cfg = tiny_cfg(prediction_type=prediction_type)
    unet, sched = build_pipeline(cfg).unet, build_noise_scheduler(cfg)
    f = text_encoder.encode(["a red square", "a blue circle", "a green star", "a white heart"])
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        got = diffusion_loss(unet, sched, x0, f.words, f.mask, torch.Generator().manual_seed(0), min_snr_gamma=5.0)
        plain = diffusion_loss(unet, sched, x0, f.words, f.mask, torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)  # draws t = 937, 449, 18, 338: SNR 0.009 ... 619, both sides of 5
        noise = randn_tensor(x0.shape, generator=g)
        t = torch.randint(0, 1000, (4,), generator=g)
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t) if prediction_type == "v_prediction" else noise
        per = (unet(xt, t, encoder_hidden_states=f.words, encoder_attention_mask=f.mask).sample - target) ** 2
        per = per.mean(dim=(1, 2, 3))
        snr = [float(sched.alphas_cumprod[k] / (1 - sched.alphas_cumprod[k])) for k in t]
        w = [min(s, 5.0) / (s + 1 if prediction_type == "v_prediction" else s) for s in snr]
        want = sum(wi * pi for wi, pi in zip(w, per.tolist())) / 4
    assert abs(got.item() - want) < 1e-5 * max(1.0, want)
    assert torch.allclose(plain, per.mean(), atol=1e-6)
    assert not torch.allclose(got, plain)
    with pytest.raises(ValueError, match="min_snr_gamma must be >= 0"):
        tiny_cfg(min_snr_gamma=-1)
