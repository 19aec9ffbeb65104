"""The training engine's optimiser service (benchmark/api/training.py: add_optimizer)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medad_bench.api.contract import get_method, make_config

OPTIMISERS = {
    "adam": lambda params: torch.optim.Adam(params, 1e-3, (0.5, 0.999)),
    "sgd": lambda params: torch.optim.SGD(params, 0.01, momentum=0.9, weight_decay=1e-4),
    "rmsprop": lambda params: torch.optim.RMSprop(params, 1e-3),
}


def _network() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
                         nn.Conv2d(8, 4, 3, stride=2), nn.Flatten(), nn.Linear(4 * 6 * 6, 1))


@pytest.mark.parametrize("kind", sorted(OPTIMISERS))
def test_the_multi_tensor_update_is_bit_for_bit_the_one_tensor_loop(kind: str) -> None:
    """Why add_optimizer may switch it on: 40 steps of each, the same weights exactly."""
    one_by_one = _network()
    together = copy.deepcopy(one_by_one)
    opt_loop = OPTIMISERS[kind](one_by_one.parameters())
    opt_foreach = OPTIMISERS[kind](together.parameters())
    for group in opt_foreach.param_groups:
        group["foreach"] = True
    assert all(group["foreach"] is None for group in opt_loop.param_groups)
    data = torch.Generator().manual_seed(0)
    for _ in range(40):
        x = torch.rand(6, 1, 16, 16, generator=data) * 2 - 1
        for net, optimiser in ((one_by_one, opt_loop), (together, opt_foreach)):
            optimiser.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            optimiser.step()
    for a, b in zip(one_by_one.state_dict().values(), together.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_registered_optimisers_run_multi_tensor_unless_the_method_chose() -> None:
    method = get_method("autoencoder")(make_config(get_method("autoencoder"), "quick",
                                                   image_size=32, channels=1))
    method.optimizers = {}
    net = _network()
    chosen = method.add_optimizer("mine", torch.optim.Adam(net.parameters(), foreach=False))
    left = method.add_optimizer("left", torch.optim.SGD(net.parameters(), 0.1))
    assert [g["foreach"] for g in chosen.param_groups] == [False]
    assert [g["foreach"] for g in left.param_groups] == [True]
    assert method.optimizers == {"mine": chosen, "left": left}
