import torch
import torch.nn.functional as F

from textgan.checkpoint import export_generator, load_generator
from textgan.data import BOS, EOS, PAD, WordTokenizer
from textgan.models import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig, sample_tokens


def test_step_cell_matches_nn_lstm():
    g = Generator(GeneratorConfig(vocab_size=50, emb_dim=8, hidden_dim=12, seq_len=7))
    x = torch.randint(0, 50, (5, 7))
    hs, _ = g.prefix_states(x)  # (T, B, H)
    h_ref, _ = g.lstm(g.emb(g.inputs(x)))  # (B, T, H)
    assert torch.allclose(hs.transpose(0, 1), h_ref, atol=1e-6)


def test_sample_tokens_distribution_and_top_k():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, 0.5]])
    n = 100000
    tok = sample_tokens(logits.expand(n, 5).contiguous(), torch.rand(n))
    freq = torch.bincount(tok, minlength=5).float() / n
    assert torch.allclose(freq, F.softmax(logits[0], 0), atol=0.01)
    tok = sample_tokens(logits.expand(n, 5).contiguous(), torch.rand(n), temperature=0.5, top_k=2)
    assert set(tok.unique().tolist()) == {1, 2}
    freq = torch.bincount(tok, minlength=5).float()[1:3] / n
    assert torch.allclose(freq, F.softmax(torch.tensor([2.0, 4.0]), 0), atol=0.01)


def test_text_sampling_ends_with_pad_and_never_emits_banned():
    cfg = GeneratorConfig(vocab_size=30, emb_dim=8, hidden_dim=8, seq_len=12, start_token=BOS, eos_id=EOS,
                          pad_id=PAD, banned=[PAD, BOS])  # fmt: skip
    g = Generator(cfg)
    x = g.sample(300, generator=torch.Generator().manual_seed(0))
    assert not (x == BOS).any()
    for row in x.tolist():
        if EOS in row:
            k = row.index(EOS)
            assert all(t == PAD for t in row[k + 1 :])
        assert PAD not in row[: row.index(EOS) if EOS in row else len(row)]


def test_discriminator_matmul_conv_matches_conv1d():
    d = Discriminator(DiscriminatorConfig(vocab_size=40, emb_dim=6, filter_sizes=[1, 3, 5], num_filters=[4, 5, 6]))
    d.eval()
    x = torch.randint(0, 40, (7, 9))
    e = d.emb(x).transpose(1, 2)
    feats = torch.cat([F.relu(c(e)).amax(2) for c in d.convs], 1)
    gate, cand = d.highway(feats).chunk(2, 1)
    gate = torch.sigmoid(gate)
    ref = d.out(gate * F.relu(cand) + (1 - gate) * feats)
    assert torch.allclose(d(x), ref, atol=1e-5)
    assert d(torch.randint(0, 40, (3, 2))).shape == (3, 2)  # shorter than the widest filter: padded


def test_save_load_round_trip(tmp_path):
    tok = WordTokenizer.train(["a cat sits", "a dog runs"])
    cfg = GeneratorConfig(vocab_size=tok.vocab_size, emb_dim=8, hidden_dim=8, seq_len=6, start_token=BOS,
                          eos_id=EOS, pad_id=PAD, banned=[PAD, BOS])  # fmt: skip
    g = Generator(cfg).eval()
    export_generator(g, tmp_path / "m", "text", tok, {"recipe": "test"})
    g2, meta, tok2 = load_generator(tmp_path / "m", expect_task="text")
    x = torch.randint(4, tok.vocab_size, (3, 6))
    assert torch.equal(g(x), g2(x))
    assert meta["recipe"] == "test" and tok2.itos == tok.itos
    a = g.sample(5, generator=torch.Generator().manual_seed(1))
    b = g2.sample(5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not list(tmp_path.glob("**/*.tmp")) and not list(tmp_path.glob("**/*.pt"))


def test_discriminator_bf16_autocast_keeps_fp32_weights_and_logits():
    """precision='bf16': the same network under bfloat16 autocast. Logits come back fp32 and close to the fp32
    forward's; gradients land on the fp32 weights; a bad precision is refused by name."""
    import pytest

    cfg = dict(vocab_size=40, emb_dim=8, filter_sizes=[1, 3, 5], num_filters=[6, 8, 10])
    torch.manual_seed(0)
    d32 = Discriminator(DiscriminatorConfig(**cfg)).eval()
    d16 = Discriminator(DiscriminatorConfig(**cfg, precision="bf16")).eval()
    d16.load_state_dict(d32.state_dict())
    x = torch.randint(0, 40, (16, 9))
    ref, out = d32(x), d16(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out - ref).abs().max() < 0.05 and not torch.equal(out, ref)  # bf16 really ran, and stays close
    p16, p32 = d16.real_prob(x), d32.real_prob(x)
    assert (p16 - p32).abs().max() < 0.02
    d16.train()
    F.cross_entropy(d16(x), torch.randint(0, 2, (16,))).backward()
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
               for p in d16.parameters())  # fmt: skip
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16'"):
        DiscriminatorConfig(**cfg, precision="fp16")
