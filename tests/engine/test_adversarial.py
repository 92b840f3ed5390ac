"""Adversarial distance and critical samples against linear models, whose nearest adversarial
example has a closed form, and against a small MLP trained on planted mislabeled points."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from memscore.engine.adversarial import critical, default_eps_max, min_perturbation
from memscore.engine.models import MLP

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def stacked(models: list[nn.Module]):
    """params, buffers and the (G, B, ...) forward, exactly as ensemble._stack_models builds them."""
    params, buffers = stack_module_state(models)
    params = {k: v.requires_grad_() for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")

    def fmodel(p, b, x):
        return functional_call(base, (p, b), (x,))

    return params, buffers, torch.vmap(fmodel, in_dims=(0, 0, 0))


def linear_models(G: int = 3, d: int = 5, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [nn.Linear(d, 2) for _ in range(G)]


def closed_form(models: list[nn.Module], x: torch.Tensor, norm: str) -> torch.Tensor:
    """(G, E) distance to the boundary of 2-class linear models: |margin| / ‖w1 − w0‖_dual
    (L2 ball: the L2 norm; L∞ box: the L1 norm)."""
    rows = []
    with torch.no_grad():
        for m in models:
            w, b = m.weight[1] - m.weight[0], m.bias[1] - m.bias[0]
            rows.append((x @ w + b).abs() / w.norm(p=2 if norm == "l2" else 1))
    return torch.stack(rows)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_distance_matches_closed_form(norm):
    models, x = linear_models(), torch.randn(100, 5, generator=torch.Generator().manual_seed(1))
    params, buffers, fn = stacked(models)
    true = closed_form(models, x, norm)
    eps_max = 1.2 * float(true.max())
    got = min_perturbation(fn, params, buffers, x, norm, eps_max)
    resolution = eps_max / 2**8
    assert not got.censored.any()
    assert (got.distance >= true * (1 - 1e-4)).all()  # a flip found is a real adversarial example
    assert (got.distance <= true * 1.01 + resolution).all()
    assert all(p.grad is None for p in params.values())


def test_distance_is_independent_of_chunking_and_reproducible():
    torch.manual_seed(0)
    params, buffers, fn = stacked([MLP(8, 4, width=32) for _ in range(2)])
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(2))
    eps_max = default_eps_max(x, "l2")
    whole = min_perturbation(fn, params, buffers, x, "l2", eps_max, batch=40, seed=3)
    chunked = min_perturbation(fn, params, buffers, x, "l2", eps_max, batch=9, seed=3)
    again = min_perturbation(fn, params, buffers, x, "l2", eps_max, batch=40, seed=3)
    torch.testing.assert_close(chunked.distance, whole.distance, atol=eps_max / 2**8, rtol=0)
    assert torch.equal(again.distance, whole.distance) and torch.equal(again.censored, whole.censored)
    assert whole.distance.dtype == torch.float32 and whole.distance.shape == (2, 40)


def test_tiny_eps_max_censors_every_pair():
    models, x = linear_models(), torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    params, buffers, fn = stacked(models)
    tiny = 1e-3 * float(closed_form(models, x, "linf").min())
    got = min_perturbation(fn, params, buffers, x, "linf", tiny)
    assert got.censored.all()
    assert torch.equal(got.distance, torch.full((3, 40), tiny))


def test_critical_iff_radius_exceeds_linf_distance():
    models, x = linear_models(), torch.randn(200, 5, generator=torch.Generator().manual_seed(1))
    params, buffers, fn = stacked(models)
    true = closed_form(models, x, "linf")
    radius = float(true.median())
    got = critical(fn, params, buffers, x, radius)
    clear = (true - radius).abs() > 0.02 * radius
    assert got.dtype == torch.bool and got.shape == (3, 200)
    assert torch.equal(got[clear], (true < radius)[clear])
    assert 0.3 < got.float().mean() < 0.7  # the critical sample ratio at the median distance


def test_model_results_do_not_depend_on_its_stack():
    torch.manual_seed(0)
    models = [MLP(8, 4, width=32) for _ in range(3)]
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(2))
    eps_max = default_eps_max(x, "linf")
    params, buffers, fn = stacked(models)
    together = min_perturbation(fn, params, buffers, x, "linf", eps_max)
    crit = critical(fn, params, buffers, x, eps_max / 4)
    for g, m in enumerate(models):
        p1, b1, fn1 = stacked([m])
        alone = min_perturbation(fn1, p1, b1, x, "linf", eps_max)
        torch.testing.assert_close(alone.distance[0], together.distance[g], atol=eps_max / 2**8, rtol=0)
        assert torch.equal(alone.pred[0], together.pred[g])
        assert torch.equal(critical(fn1, p1, b1, x, eps_max / 4)[0], crit[g])


def two_clusters_with_flips(n: int = 200, flips: int = 6):
    """2-D blobs at (±2, 0); the `flips` points nearest each centre carry the other label."""
    g = torch.Generator().manual_seed(4)
    y = torch.arange(n) % 2
    x = 0.7 * torch.randn(n, 2, generator=g) + torch.stack([4.0 * y - 2, torch.zeros(n)], 1)
    centre_dist = (x - torch.stack([4.0 * y - 2, torch.zeros(n)], 1)).norm(dim=1)
    flipped = torch.cat([torch.nonzero(y == c).flatten()[centre_dist[y == c].argsort()[: flips // 2]] for c in (0, 1)])
    y[flipped] = 1 - y[flipped]
    return x, y, flipped


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 400) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def test_mislabeled_points_are_closer_to_the_boundary():
    x, y, flipped = two_clusters_with_flips()
    models = []
    for seed in range(2):
        torch.manual_seed(seed)
        models.append(train(MLP(2, 2, width=64), x, y))
    params, buffers, fn = stacked(models)
    got = min_perturbation(fn, params, buffers, x, "l2", default_eps_max(x, "l2"))
    typical = torch.ones(len(x), dtype=torch.bool)
    typical[flipped] = False
    fitted = got.pred[:, flipped] == y[flipped]
    assert fitted.float().mean() > 0.5  # the models carve out the mislabeled points...
    mean = got.distance.mean(0)
    assert mean[flipped].max() < mean[typical].quantile(0.1)  # ...so narrowly that they are outliers


@pytest.mark.parametrize(
    "kwargs",
    [{"norm": "l1"}, {"eps_max": 0.0}, {"batch": 0}, {"start": 1.5}],
)
def test_bad_arguments_are_refused(kwargs):
    params, buffers, fn = stacked(linear_models(G=1))
    args = {"norm": "l2", "eps_max": 1.0} | kwargs
    with pytest.raises(ValueError):
        min_perturbation(fn, params, buffers, torch.zeros(3, 5), **args)
