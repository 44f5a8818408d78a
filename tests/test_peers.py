"""NormalNorm and Dynamic Tanh against direct transcriptions of their published formulas."""
import numpy as np
import pytest
import torch

import ibnorm
from ibnorm.peers import yeo_johnson, yeo_johnson_newton_lambda


def yj_numpy(h, lam):
    """Yeo & Johnson (2000), eq. (2.1), transcribed."""
    out = np.empty_like(h)
    pos = h >= 0
    out[pos] = np.log1p(h[pos]) if lam == 0 else ((h[pos] + 1) ** lam - 1) / lam
    out[~pos] = -np.log1p(-h[~pos]) if lam == 2 else -((1 - h[~pos]) ** (2 - lam) - 1) / (2 - lam)
    return out


def nll(lam, h):
    """Per-sample Gaussian negative log-likelihood of the transformed group (with the Jacobian term)."""
    psi = yeo_johnson(h, lam)
    return 0.5 * torch.log(psi.var(unbiased=False)) - (lam - 1) * torch.mean(torch.sign(h) * torch.log1p(h.abs()))


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 1.7, 2.0])
def test_yeo_johnson_matches_definition(lam):
    h = torch.linspace(-4, 4, 801, dtype=torch.float64)
    got = yeo_johnson(h, torch.tensor(lam, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, yj_numpy(h.numpy(), lam), rtol=1e-9, atol=1e-9)


def test_newton_lambda_equals_autograd_newton_step():
    g = torch.Generator().manual_seed(1)
    for skew in (0.5, 1.0, -0.7):
        x = torch.randn(512, generator=g, dtype=torch.float64)
        x = x + skew * x.square()  # skewed: lambda should move away from 1
        h = (x - x.mean()) / x.std(unbiased=False)
        lam1 = torch.tensor(1.0, dtype=torch.float64)
        d1 = torch.func.grad(nll)(lam1, h)
        d2 = torch.func.grad(torch.func.grad(nll))(lam1, h)
        expected = float((1 - d1 / d2).clamp(0, 2))
        got = float(yeo_johnson_newton_lambda(h, (0,)).squeeze())
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-8)
        assert (got < 1) == (skew > 0)  # right skew is pulled in by lambda < 1


def test_layer_normalnorm_eval_is_deterministic_transcription():
    m = ibnorm.LayerNormalNorm(64, dtype=torch.float64).eval()
    x = torch.randn(5, 64, dtype=torch.float64).exp()
    with torch.no_grad():
        y = m(x)
    for row, out in zip(x, y):
        h = (row - row.mean()) / torch.sqrt(row.var(unbiased=False) + 1e-5)
        lam = float(yeo_johnson_newton_lambda(h, (0,)))
        np.testing.assert_allclose(out.numpy(), yj_numpy(h.numpy(), lam), rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        assert torch.equal(m(x), y)


def test_normalnorm_training_noise_scale():
    m = ibnorm.LayerNormalNorm(4096, noise_train=1.0, dtype=torch.float64)
    x = torch.randn(8, 4096, dtype=torch.float64)
    y_train, y_eval = m(x), m.eval()(x)
    noise = y_train - y_eval
    mad = (y_eval - y_eval.mean(-1, keepdim=True)).abs().mean(-1)
    assert torch.allclose(noise.std(-1), mad, rtol=0.05)
    m.train()
    x.requires_grad_(True)
    m(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_batch_normalnorm_running_stats():
    m = ibnorm.BatchNormalNorm2d(3, dtype=torch.float64)
    xs = [torch.randn(8, 3, 4, 4, dtype=torch.float64).exp() for _ in range(3)]
    for x in xs:
        m(x)
    assert int(m.num_batches_tracked) == 3
    assert (m.running_lambda < 1).all()  # log-normal input is right-skewed
    m.eval()
    assert torch.equal(m(xs[0][:1]), m(xs[0][:4])[:1])


def test_dynamic_tanh_formula():
    m = ibnorm.DynamicTanh(6, alpha_init=0.8)
    with torch.no_grad():
        m.weight.uniform_(0.5, 2)
        m.bias.uniform_(-1, 1)
    x = torch.randn(3, 4, 6)
    torch.testing.assert_close(m(x), m.weight * torch.tanh(0.8 * x) + m.bias)
    conv = ibnorm.DynamicTanh(6, channels_last=False)
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(conv(x), torch.tanh(0.5 * x))
    assert float(m.alpha.detach()) == pytest.approx(0.8)


def test_dynamic_erf_formula_and_the_papers_initialization():
    """Derf (arXiv 2512.10938): weight * erf(alpha * x + shift) + bias, alpha 0.5, shift 0, weight 1, bias 0."""
    m = ibnorm.DynamicErf(6)
    assert float(m.alpha.detach()) == 0.5 and float(m.shift.detach()) == 0.0
    assert torch.equal(m.weight, torch.ones(6)) and torch.equal(m.bias, torch.zeros(6))
    with torch.no_grad():
        m.weight.uniform_(0.5, 2), m.bias.uniform_(-1, 1), m.alpha.fill_(0.8), m.shift.fill_(0.3)
    x = torch.randn(3, 4, 6)
    torch.testing.assert_close(m(x), m.weight * torch.erf(0.8 * x + 0.3) + m.bias)
    conv = ibnorm.DynamicErf(6, channels_last=False)
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(conv(x), torch.erf(0.5 * x))
    out = m(torch.randn(5, 6)).sum()
    out.backward()
    assert m.shift.grad is not None and m.alpha.grad is not None  # both scalars learn
    m.reset_parameters()
    assert float(m.shift.detach()) == 0.0 and float(m.alpha.detach()) == 0.5
    state = m.state_dict()
    assert set(state) == {"alpha", "shift", "weight", "bias", "norm_settings"}
    again = ibnorm.DynamicErf(6)
    again.load_state_dict(state)
    assert isinstance(ibnorm.create_norm_layer("derf", 8), ibnorm.DynamicErf)
