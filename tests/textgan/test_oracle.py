import numpy as np
import torch

from textgan.oracle import Oracle


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_step_matches_readme_equations(oracle_npz):
    z = np.load(oracle_npz)
    oracle = Oracle.load(oracle_npz)
    # Two steps by hand, straight from the README: start token 0, then token 17.
    h = c = np.zeros(32, np.float64)
    P = {k: z[k].astype(np.float64) for k in z.files}
    want = []
    for tok in (0, 17):
        x = P["embedding"][tok]
        i = _sigmoid(x @ P["W_i"] + h @ P["U_i"] + P["b_i"])
        f = _sigmoid(x @ P["W_f"] + h @ P["U_f"] + P["b_f"])
        o = _sigmoid(x @ P["W_o"] + h @ P["U_o"] + P["b_o"])
        g = np.tanh(x @ P["W_c"] + h @ P["U_c"] + P["b_c"])
        c = f * c + i * g
        h = o * np.tanh(c)
        want.append(h @ P["W_out"] + P["b_out"])
    th = tc = torch.zeros(1, 32)
    for tok, w in zip((0, 17), want):
        logits, th, tc = oracle.step(torch.tensor([tok]), th, tc)
        assert np.allclose(logits[0].double().numpy(), w, atol=1e-5)
    # nll() scores exactly these logits
    seq = torch.tensor([[17, 5]])
    lp0 = torch.log_softmax(torch.tensor(want[0]), 0)[17]
    lp1 = torch.log_softmax(torch.tensor(want[1]), 0)[5]
    assert torch.allclose(oracle.nll(seq)[0].double(), -(lp0 + lp1) / 2, atol=1e-4)


def test_entropy_estimate_about_5_75(oracle_npz):
    oracle = Oracle.load(oracle_npz)
    x = oracle.sample(2000, generator=torch.Generator().manual_seed(1))
    assert x.shape == (2000, 20) and int(x.max()) < 5000
    assert abs(float(oracle.nll(x).mean()) - 5.75) < 0.1


def test_oracle_sampling_is_seeded(oracle_npz):
    oracle = Oracle.load(oracle_npz)
    a = oracle.sample(50, generator=torch.Generator().manual_seed(3))
    b = oracle.sample(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
