import pytest
import torch
from torch.func import functional_call, vmap

from fedsim.errors import ConfigError
from fedsim.models import build_model
from fedsim.plugins import available, plugin_class


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
    registered = set(available("model"))  # plugins may add more
    assert {"mlp", "cnn", "resnet18_gn", "resnet32_gn", "resnet110_gn", "femnist_cnn", "cifar_cnn", "lstm", "text"} <= registered


def token_ids(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Token ids in [1, vocab): no padding."""
    return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "name, shape", [("femnist_cnn", (1, 28, 28)), ("cifar_cnn", (3, 32, 32)), ("cifar_cnn", (1, 15, 9))]
)
def test_benchmark_cnns_map_images_of_any_shape_to_class_logits(name, shape):
    model = build_model({"name": name}, shape, 10, seed=0)
    assert model(torch.randn(2, *shape)).shape == (2, 10)
    assert not list(model.buffers())


def test_the_leaf_femnist_cnn_has_the_papers_parameter_count():
    model = build_model({"name": "femnist_cnn"}, (1, 28, 28), 62, seed=0)
    assert sum(p.numel() for p in model.parameters()) == 6_603_710


def test_the_femnist_cnn_refuses_what_it_cannot_pool():
    with pytest.raises(ConfigError, match="femnist_cnn"):
        build_model({"name": "femnist_cnn"}, (64,), 10, seed=0)
    with pytest.raises(ConfigError, match="4x4"):
        build_model({"name": "femnist_cnn"}, (1, 3, 28), 10, seed=0)


def test_lstm_predicts_every_position_or_the_last_and_last_is_each_at_the_end():
    table = {"name": "lstm", "hidden": 16}
    each = build_model({**table, "predict": "each"}, (12,), 30, seed=0, vocab_size=30)
    last = build_model({**table, "predict": "last"}, (12,), 30, seed=0, vocab_size=30)
    x = token_ids(3, 12, 30)
    with torch.no_grad():
        every, final = each(x), last(x)
    assert every.shape == (3, 12, 30) and final.shape == (3, 30)
    assert torch.allclose(final, every[:, -1], atol=1e-6)  # the same network; the head's matmul differs by shape
    assert not list(each.buffers())


def test_text_leaves_padding_out_of_its_mean():
    model = build_model({"name": "text"}, (10,), 2, seed=0, vocab_size=50)
    x = token_ids(4, 10, 50)
    padded = torch.cat([torch.zeros(4, 5, dtype=torch.int64), x], dim=1)
    with torch.no_grad():
        assert model(x).shape == (4, 2)
        assert torch.allclose(model(padded), model(x), atol=1e-6)
        assert torch.isfinite(model(torch.zeros(2, 10, dtype=torch.int64))).all()


def test_a_token_model_takes_the_datasets_vocabulary_unless_the_config_sets_one():
    assert build_model({"name": "text"}, (10,), 2, seed=0, vocab_size=50).embed.num_embeddings == 50
    configured = build_model({"name": "text", "vocab_size": 20}, (10,), 2, seed=0, vocab_size=50)
    assert configured.embed.num_embeddings == 20
    with pytest.raises(ConfigError, match="model 'lstm' takes token ids, but the dataset gives features") as err:
        build_model({"name": "lstm"}, (10,), 2, seed=0)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"model 'mlp' takes features, but the dataset gives token ids: .*\(lstm, text\)"):
        build_model({"name": "mlp"}, (10,), 2, seed=0, vocab_size=50)


@pytest.mark.parametrize(
    "table, x",
    [
        ({"name": "text"}, token_ids(3, 10, 40)),
        ({"name": "femnist_cnn"}, torch.randn(2, 1, 28, 28)),
        ({"name": "cifar_cnn"}, torch.randn(2, 3, 32, 32)),
    ],
    ids=lambda v: v["name"] if isinstance(v, dict) else "",
)
def test_benchmark_models_run_under_vmap_over_stacked_parameter_copies(table, x):
    vocab = 40 if x.dtype == torch.int64 else 0
    a, b = (build_model(table, tuple(x.shape[1:]), 5, seed=s, vocab_size=vocab) for s in (0, 1))
    stacked = {name: torch.stack([p, dict(b.named_parameters())[name]]) for name, p in a.named_parameters()}
    with torch.no_grad():
        both = vmap(lambda params: functional_call(a, params, (x,)))(stacked)
        assert torch.allclose(both, torch.stack([a(x), b(x)]), atol=1e-5)


def test_the_lstm_says_it_does_not_vectorize_because_vmap_has_no_rule_for_it():
    model = build_model({"name": "lstm", "hidden": 8, "layers": 1}, (6,), 4, seed=0, vocab_size=10)
    stacked = {name: torch.stack([p, p]) for name, p in model.named_parameters()}
    x = token_ids(2, 6, 10)
    with pytest.raises(RuntimeError, match="aten::lstm"):
        vmap(lambda params: functional_call(model, params, (x,)))(stacked)
    assert not plugin_class("model", "lstm").vectorizes and plugin_class("model", "text").vectorizes


@pytest.mark.parametrize("name", ["femnist_cnn", "cifar_cnn", "lstm", "text"])
def test_benchmark_models_are_seeded(name):
    shape, vocab = ((3, 16, 16), 0) if name.endswith("cnn") else ((8,), 20)
    a, b, c = (build_model({"name": name}, shape, 4, seed=s, vocab_size=vocab) for s in (7, 7, 8))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
