import numpy as np
import pytest
import torch

from elbo_lib.elbo import (attention_timesteps, class_losses, class_losses_loop, elbo_timesteps, objective_weight,
                           reweight, shared_noise)
from elbo_lib.models import adapter_for


def _setup(pipe, n_t=3):
    ad = adapter_for(pipe)
    g = torch.Generator().manual_seed(1)
    h, w = ad.resolution
    x = torch.rand((1, 3, h, w), generator=g) * 2 - 1
    x0 = ad.encode_image(x)
    cond = ad.encode_text(["a photo of a red circle", "a photo of a cat", "a photo of a blue star"])
    t = torch.as_tensor(elbo_timesteps(n_t), dtype=torch.float64)
    eps = shared_noise(x0.shape[1:], n_t, seed=3, device=ad.device, dtype=torch.float32)
    return ad, x0, cond, t, eps


@pytest.mark.parametrize("weighting", ["eps", "native", "vlb"])
def test_batched_equals_naive_loop(family_pipe, weighting):
    _, pipe = family_pipe
    ad, x0, cond, t, eps = _setup(pipe)
    batched = class_losses(ad, x0, cond, t, eps, weighting, batch_size=4)
    loop = class_losses_loop(ad, x0, cond, t, eps, weighting)
    torch.testing.assert_close(batched.cpu(), loop, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("source,target", [("authors", "eps"), ("authors", "native"), ("eps", "vlb")])
def test_reweight_equals_measuring_with_the_other_weighting(family_pipe, source, target):
    """One measurement serves both weightings: re-expressed losses equal a second measurement's."""
    _, pipe = family_pipe
    ad, x0, cond, t, eps = _setup(pipe)
    a = class_losses(ad, x0, cond, t, eps, source)
    torch.testing.assert_close(reweight(a, ad, t.numpy(), source, target), class_losses(ad, x0, cond, t, eps, target),
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="timesteps"):
        reweight(a[:, :2], ad, t.numpy(), source, target)
    with pytest.raises(ValueError, match="weighting"):
        reweight(a, ad, t.numpy(), source, "bogus")


def test_batch_size_does_not_change_losses(pipes):
    ad, x0, cond, t, eps = _setup(pipes["sd1"])
    a = class_losses(ad, x0, cond, t, eps, batch_size=1)
    b = class_losses(ad, x0, cond, t, eps, batch_size=64)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    c = class_losses(ad, x0, cond, t, eps, batch_size=len(cond) * len(t) - 1)  # two uneven chunks, balanced
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)


def test_same_prompt_same_loss_shared_noise(pipes):
    ad = adapter_for(pipes["sd1"])
    x0 = ad.encode_image(torch.zeros(1, 3, *ad.resolution))
    cond = ad.encode_text(["a cat", "a cat"])
    t = torch.as_tensor(elbo_timesteps(4), dtype=torch.float64)
    eps = shared_noise(x0.shape[1:], 4, 0, ad.device, torch.float32)
    out = class_losses(ad, x0, cond, t, eps)
    torch.testing.assert_close(out[0], out[1])


def test_table1_weights(pipes):
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    for key, expect in [("sd1", lambda a, s: torch.ones_like(a)), ("sd2v", lambda a, s: a ** 2),
                        ("sd3", lambda a, s: a ** 2)]:
        ad = adapter_for(pipes[key])
        a, s = ad.alpha_sigma(t)
        torch.testing.assert_close(objective_weight(ad, t, "eps"), expect(a, s))
        torch.testing.assert_close(objective_weight(ad, t, "native"), torch.ones(3))


def test_v_weight_makes_eps_error():
    """w(t) * ||v - v_hat||^2 equals the eps-space error computed from v_hat (Table I)."""
    g = torch.Generator().manual_seed(0)
    a, s = torch.tensor(0.8), torch.tensor(0.6)
    x0, eps, v_hat = (torch.randn(10, generator=g) for _ in range(3))
    z = a * x0 + s * eps
    v = a * eps - s * x0
    eps_hat = s * z + a * v_hat
    torch.testing.assert_close(((eps - eps_hat) ** 2).mean(), a ** 2 * ((v - v_hat) ** 2).mean())


def test_timestep_strategies():
    np.testing.assert_allclose(np.round(elbo_timesteps(20) * 1000), np.arange(1, 1000, 50))
    for name, (lo, hi) in {"small": (0, 0.2), "middle": (0.4, 0.6), "large": (0.7, 0.9)}.items():
        ts = elbo_timesteps(10, name)
        assert len(ts) == 10 and ts.min() > lo and ts.max() < hi
    r1, r2 = elbo_timesteps(10, "random", seed=1), elbo_timesteps(10, "random", seed=1)
    np.testing.assert_array_equal(r1, r2)
    assert not np.array_equal(r1, elbo_timesteps(10, "random", seed=2))
    np.testing.assert_allclose(attention_timesteps(10, 0.2) * 1000, np.arange(20, 201, 20))
    with pytest.raises(ValueError, match="strategy"):
        elbo_timesteps(5, "sideways")
    with pytest.raises(ValueError, match=">= 1"):
        elbo_timesteps(0)
    with pytest.raises(ValueError, match="weighting"):
        objective_weight(None, torch.zeros(1), "bogus")
