import pytest
import torch

from textgan.data import BOS, EOS, PAD
from textgan.models import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig, sample_tokens
from textgan.seqgan import pg_loss, rollout_rewards, rollout_sequences, update_rollout


def _models(text: bool):
    V, T = 12, 7
    if text:
        cfg = GeneratorConfig(V, 8, 10, T, start_token=BOS, eos_id=EOS, pad_id=PAD, banned=[PAD, BOS])
    else:
        cfg = GeneratorConfig(V, 8, 10, T, start_token=0)
    gen = Generator(cfg)
    for p in gen.parameters():  # larger weights: EOS shows up often enough to exercise variable lengths
        torch.nn.init.normal_(p, std=0.5)
    dis = Discriminator(DiscriminatorConfig(V, 6, [1, 2, 3], [3, 4, 5], dropout=0.5))
    return gen, dis


def _naive(rollout, dis, x, R, u):
    """Reference: one sequence, one prefix length, one rollout at a time, step by step."""
    B, T = x.shape
    cfg = rollout.config
    dis.eval()
    seqs = torch.zeros(T - 1, R, B, T, dtype=torch.long)
    rewards = torch.zeros(B, T)
    with torch.no_grad():
        for t in range(1, T):
            for r in range(R):
                for b in range(B):
                    seq = x[b].clone()
                    done = cfg.eos_id is not None and bool((seq[:t] == cfg.eos_id).any())
                    h = c = torch.zeros(1, cfg.hidden_dim)
                    prev = cfg.start_token
                    for p in range(T):
                        h, c = rollout.step_state(torch.tensor([prev]), h, c)
                        if p >= t:
                            logits = rollout.out(h) + rollout.logit_mask
                            tok = int(sample_tokens(logits, u[t - 1, r, b, p : p + 1])[0])
                            if cfg.eos_id is not None:
                                tok = cfg.pad_id if done else tok
                                done = done or tok == cfg.eos_id
                            seq[p] = tok
                        prev = int(seq[p])
                    seqs[t - 1, r, b] = seq
                    rewards[b, t - 1] += float(torch.softmax(dis(seq[None]), 1)[0, 1]) / R
        rewards[:, T - 1] = torch.softmax(dis(x), 1)[:, 1]
    return seqs, rewards


@pytest.mark.parametrize("text", [False, True])
def test_batched_rollouts_equal_naive_loop(text):
    gen, dis = _models(text)
    x = gen.sample(5, generator=torch.Generator().manual_seed(0))
    B, T = x.shape
    R = 3
    u = torch.rand(T - 1, R, B, T, generator=torch.Generator().manual_seed(1))
    ref_seqs, ref_rewards = _naive(gen, dis, x, R, u)
    seqs = rollout_sequences(gen, x, R, u)
    assert torch.equal(seqs, ref_seqs)
    for t in range(1, T):  # prefixes are kept
        assert torch.equal(seqs[t - 1, :, :, :t], x[:, :t].expand(R, B, t))
    rewards = rollout_rewards(gen, dis, x, R, u)
    assert rewards.shape == (B, T)
    assert torch.allclose(rewards, ref_rewards, atol=1e-5)
    if text:
        assert (seqs == PAD).any() and (seqs == EOS).any()  # variable lengths were exercised


def test_discriminator_in_eval_mode_and_called_once():
    gen, dis = _models(False)
    x = gen.sample(4)
    seen = []
    dis.register_forward_pre_hook(lambda m, inp: seen.append((m.training, m.dropout.training, inp[0].shape[0])))
    dis.train()
    rollout_rewards(gen, dis, x, num=2)
    T = x.shape[1]
    assert seen == [(False, False, (T - 1) * 2 * 4 + 4)]  # one call on all rollouts + the sequences, no dropout
    assert dis.training  # restored afterwards


def test_rollout_update_rate_is_real():
    gen, _ = _models(False)
    roll = Generator(gen.config)
    before = [p.clone() for p in roll.parameters()]
    update_rollout(roll, gen, 0.8)
    for b, pr, pg in zip(before, roll.parameters(), gen.parameters()):
        assert torch.allclose(pr, 0.8 * b + 0.2 * pg)
    update_rollout(roll, gen, 0.0)
    assert all(torch.equal(pr, pg) for pr, pg in zip(roll.parameters(), gen.parameters()))


def test_pg_loss_gradient_sign_and_baseline():
    gen, _ = _models(True)
    x = gen.sample(6)
    r = torch.rand(x.shape)
    loss = pg_loss(gen, x, r)
    loss.backward()
    assert torch.isfinite(loss) and gen.out.weight.grad.abs().sum() > 0
    m = gen.token_mask(x)
    assert torch.allclose(loss, -(gen.log_probs(x) * r * m).sum() / m.sum())
    assert torch.isfinite(pg_loss(gen, x, r, "mean"))
    # SeqGAN's code sums over the batch's tokens: the same loss times the token count.
    assert torch.allclose(pg_loss(gen, x, r, reduction="sum"), loss * m.sum())
