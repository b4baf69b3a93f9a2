import pytest
import torch

from fedsim.errors import ConfigError
from fedsim.models import build_model
from fedsim.plugins import available


@pytest.mark.parametrize(
    "name, shape",
    [("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("cnn", (1, 40)), ("mlp", (60,)), ("resnet18_gn", (3, 32, 32))],
)
def test_models_map_inputs_to_class_logits(name, shape):
    model = build_model({"name": name}, shape, 10, seed=0)
    assert model(torch.randn(4, *shape)).shape == (4, 10)
    assert not list(model.buffers()), "models must be buffer-free so every backend can train them"


def test_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model({"name": "mlp"}, (64,), 10, seed=1)
    after = torch.rand(1)
    b = build_model({"name": "mlp"}, (64,), 10, seed=1)
    c = build_model({"name": "mlp"}, (64,), 10, seed=2)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_mlp_widths_follow_config():
    model = build_model({"name": "mlp", "hidden": [64, 32]}, (1, 8, 8), 10, seed=0)
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(64, 64), (64,), (32, 64), (32,), (10, 32), (10,)]


def test_resnet_rejects_sequences():
    with pytest.raises(ConfigError, match="resnet18_gn"):
        build_model({"name": "resnet18_gn"}, (1, 40), 10, seed=0)
    assert {"mlp", "cnn", "resnet18_gn", "resnet32_gn", "resnet110_gn"} <= set(available("model"))  # plugins may add more
