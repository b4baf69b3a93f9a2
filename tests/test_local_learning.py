"""Local-learning blocks: block-wise gradients, auxiliary nets, what is federated, memory."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from clients.aux_nets import ManAux, auglocal_layers, man_weight, pyramid_depths
from clients.local_learning import (
    EMA,
    PRIVATE_AUX,
    LocalLearning,
    LocalLearningNet,
    local_learning_grad_fn,
    split_layers,
)
from fedsim.backends import make_backend
from fedsim.backends.serial import SerialBackend
from fedsim.cli import app
from fedsim.config import load_config
from fedsim.engine import Simulation
from fedsim.errors import ConfigError
from fedsim.gradients import autograd_grad_fn
from fedsim.memory import MemoryMeter, model_state_bytes
from fedsim.models import build_model
from fedsim.results import load_weights
from fedsim.strategy import LocalContext
from fedsim.trainer import split_state
from fedsim.validate import validate
from strategies.fedavg import FedAvg
from tests.conftest import QUICKSTART, small_config

METHODS = ["dgl", "auglocal", "man"]
TINY = [
    "data.num_clients=4",
    "train.rounds=2",
    "train.local_steps=2",
    "model.hidden=[16,16]",
    "trainer.name=local_learning",
    "trainer.blocks=2",
    "engine.device=cpu",
]


def _model(name: str, shape, method: str, blocks: int, *extra: str, **options) -> LocalLearningNet:
    """The `model.name` network (`extra`: model overrides) as `LocalLearning(method, blocks, **options)`
    trains it."""
    c = load_config(None, [f"model.name={name}", *extra])
    trainer = LocalLearning(method=method, blocks=blocks, **options)
    return trainer.build_model(build_model(c.model, shape, 10, seed=0), shape, 10, seed=0)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _batch(shape, n: int = 4):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen)


# ---------------------------------------------------------------------- gradients


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "name, shape, extra",
    [
        ("mlp", (1, 8, 8), ["model.hidden=[16,16]"]),
        ("cnn", (1, 40), ["model.channels=[8,8]"]),
        ("resnet32_gn", (3, 8, 8), []),
    ],
)
def test_one_block_is_backprop(method, name, shape, extra):
    model = _model(name, shape, method, 1, *extra)
    params, batch = _params(model), _batch(shape)
    loss, grads = local_learning_grad_fn(model, F.cross_entropy)(params, batch)
    bp_loss, bp_grads = autograd_grad_fn(model, F.cross_entropy)(params, batch)
    assert torch.equal(loss, bp_loss)
    assert grads.keys() == bp_grads.keys() and all(torch.equal(grads[k], bp_grads[k]) for k in grads)


@pytest.mark.parametrize("method", METHODS)
def test_no_gradient_crosses_a_block_boundary(method):
    """Changing everything after block 0 (later blocks, their auxiliary nets, the head) leaves block 0's
    gradients as they were, which backprop's do not; and every block's input is detached."""
    model = _model("mlp", (1, 8, 8), method, 3, "model.hidden=[16,16,16]")
    start, stop = model.module_ranges[0]
    block0 = [f"backbone.{n}" for n, _ in model.backbone[start:stop].named_parameters()]
    block0 += [f"aux.0.{n}" for n, _ in model.aux[0].named_parameters()]
    params, batch = _params(model), _batch((1, 8, 8))
    later = {k: v if k in block0 else v + 0.5 for k, v in params.items()}
    ll, bp = local_learning_grad_fn(model, F.cross_entropy), autograd_grad_fn(model.backbone, F.cross_entropy)
    _, g = ll(params, batch)
    _, g_later = ll(later, batch)
    assert all(torch.equal(g[k], g_later[k]) for k in block0 if k in g)
    assert not all(torch.equal(g[k], g_later[k]) for k in g if k not in block0)
    backbone = lambda p: {k.removeprefix("backbone."): v for k, v in p.items() if k.startswith("backbone.")}
    _, bp_g = bp(backbone(params), batch)
    _, bp_later = bp(backbone(later), batch)
    assert not torch.equal(bp_g["1.weight"], bp_later["1.weight"])

    inputs = []
    hooks = [
        model.backbone[start].register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
        for start, _ in model.module_ranges
    ]
    ll(params, batch)
    for hook in hooks:
        hook.remove()
    assert len(inputs) == 3 and all(h.grad_fn is None and not h.requires_grad for h in inputs)


def test_local_learning_composes_with_a_strategy_that_calls_grad_fn_twice():
    config = small_config(
        *TINY,
        "train.rounds=4",
        "train.local_steps=5",
        "trainer.method=auglocal",
        "strategy.name=fedspeed",
    )
    sim = Simulation(config)
    sim.run()
    losses = [r["train_loss"] for r in sim.history.records]
    assert losses[-1] < losses[0], losses


# ---------------------------------------------------------------------- auxiliary nets


def test_auglocal_samples_layers_and_depths_as_the_reference():
    assert auglocal_layers(0, 16, 2) == [8, 15]  # ResNet-32, d = 2
    assert auglocal_layers(0, 16, 3) == [5, 10, 15]
    assert auglocal_layers(0, 55, 3) == [18, 36, 54]  # ResNet-110
    assert auglocal_layers(13, 16, 3) == [14, 15]  # fewer later layers than d: all of them
    assert pyramid_depths(3, 0.5, 12) == [3] * 6 + [2] * 6  # ResNet-32, d = 3, K = 13
    assert pyramid_depths(3, 0.5, 51) == [3] * 25 + [2] * 26  # ResNet-110, d = 3, K = 52
    assert pyramid_depths(2, 0.0, 5) == [2] * 5


def test_auglocal_aux_nets_are_fresh_copies_of_later_layers():
    model = _model("resnet32_gn", (3, 8, 8), "auglocal", 16, pyramid_coeff=0.0)
    layers = model.aux[0].net
    assert len(layers) == 3  # layers 8 and 15, then the linear head
    fresh, real = layers[0][0], model.backbone[2 + 8]  # layer 8: the 3rd residual block of stage 2
    assert fresh.conv2.weight.shape == real.conv2.weight.shape == (32, 32, 3, 3)
    assert fresh.conv1.weight.shape == (32, 16, 3, 3)  # takes the stem's 16 channels, strides 2
    assert not torch.equal(fresh.conv2.weight, real.conv2.weight)


def test_man_ema_copies_start_from_the_real_layer_and_weights_use_the_module_index():
    model = _model("cnn", (1, 40), "man", 3, "model.channels=[8,8,8]")
    sources = model.ema_sources()
    assert sources and all(k.startswith("aux.") and ".ema." in k for k in sources)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[e], params[s]) and not params[e].requires_grad for e, s in sources.items())
    assert sources["aux.0.ema.3.weight"] == "backbone.3.weight"  # block 1 starts with the second conv stage
    for num_aux in (2, 3, 15):  # K = 3, 4, 16: all weights stay positive, from first to last
        weights = [man_weight([5.0, 0.5], k, num_aux) for k in range(num_aux)]
        assert weights[0] == 5.0 and weights[-1] == pytest.approx(0.5) and min(weights) > 0
    assert isinstance(model.aux[1], ManAux) and model.aux[1].ce_weight == pytest.approx(1.0)


def test_man_ema_resets_from_the_global_model_and_follows_the_layer():
    trainer = LocalLearning(method="man", blocks=2, ema_momentum=0.9)
    c = load_config(None, ["model.name=mlp", "model.hidden=[16,16]"])
    model = trainer.build_model(build_model(c.model, (1, 8, 8), 10, seed=0), (1, 8, 8), 10, seed=0)
    params = trainer.prepare(model, _params(model))
    sources = trainer.ema_sources
    assert sources and not any(k in params for k in sources)
    strategy, ctx = FedAvg(), LocalContext(params, {}, {}, lr=0.1, num_steps=1)
    opt = trainer.begin(params, trainer.init_state(params), ctx)
    ema = opt[EMA]
    assert all(torch.equal(ema[e], params[s]) for e, s in sources.items())
    moved = {k: v + 1.0 for k, v in params.items()}
    grad_fn = local_learning_grad_fn(model, F.cross_entropy)
    _, stepped, opt, _ = trainer.step(
        moved, opt, strategy.client_begin(ctx), _batch((1, 8, 8)), grad_fn, strategy, ctx
    )
    assert stepped.keys() == params.keys()  # the EMA copies take no step of their own
    assert all(torch.allclose(opt[EMA][e], params[s] + 0.1) for e, s in sources.items())


# ---------------------------------------------------------------------- what is federated


def _one_round(*overrides: str):
    sim = Simulation(small_config(*TINY, "trainer.method=dgl", *overrides))
    plan = sim.plan_round(1)
    return sim, plan, SerialBackend(sim.task).run_round(plan)


def test_federated_aux_nets_are_averaged_like_the_backbone():
    sim, plan, output = _one_round()
    aux = [k for k in sim.params if k.startswith("aux.")]
    assert aux and all(k in output.total.sums["delta"] for k in aux)
    before = {k: sim.params[k].clone() for k in aux}
    sim.apply_round(plan, output)
    assert all(not torch.equal(before[k], sim.params[k]) for k in aux)


def test_local_aux_nets_stay_on_each_client_and_are_never_uploaded():
    sim, plan, output = _one_round("trainer.aux=local")
    assert not any(k.startswith("aux.") for k in sim.params)
    assert not any(k.startswith("aux.") for k in output.total.sums["delta"])
    kept = [split_state(output.client_states[cid])[1][PRIVATE_AUX] for cid in plan.client_ids]
    name = next(iter(kept[0]))
    assert not torch.equal(kept[0][name], kept[1][name])
    sim.apply_round(plan, output)
    again = split_state(sim.plan_round(2).client_states[plan.client_ids[0]])[1][PRIVATE_AUX]
    assert torch.equal(again[name], kept[0][name])  # the next round starts from the client's own


def test_frozen_aux_nets_are_shared_but_never_change():
    sim = Simulation(small_config(*TINY, "trainer.method=dgl", "trainer.aux=frozen"))
    initial = {k: v.detach().clone() for k, v in sim.model.named_parameters() if k.startswith("aux.")}
    sim.run()
    assert not any(k.startswith("aux.") for k in sim.params)
    frozen = sim.trainer.private_aux
    assert frozen.keys() == initial.keys() and all(torch.equal(frozen[k], initial[k]) for k in initial)
    assert len(sim.client_states) == 0  # FedAvg clients stay stateless


# ---------------------------------------------------------------------- memory


def test_memory_meter_counts_saved_activations_once_and_not_parameters():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    x = torch.randn(4, 8)
    with MemoryMeter() as meter:
        loss = net(x).sum()
        live = meter._live
        loss.backward()
    assert meter.activation_bytes == live == 2 * 4 * 8 * 4  # x and the ReLU output, float32
    assert meter._live == 0 and meter.cuda_bytes == 0
    assert model_state_bytes(net, momentum=True) == 3 * 4 * (2 * 8 * 8 + 2 * 8)


@pytest.mark.parametrize("method", METHODS)
def test_activation_peak_falls_as_blocks_grow(method):
    shape, peaks = (3, 16, 16), []
    for blocks in (1, 2, 4, 8, 16):
        model = _model("resnet32_gn", shape, method, blocks)
        grad_fn = local_learning_grad_fn(model, F.cross_entropy)
        with MemoryMeter() as meter:
            grad_fn(_params(model), _batch(shape))
        peaks.append(meter.activation_bytes)
    assert all(a > b for a, b in zip(peaks, peaks[1:])), peaks
    assert peaks[3] < 0.6 * peaks[0]  # K = 8: at least 40% below backprop


# ---------------------------------------------------------------------- end to end


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold"])
@pytest.mark.parametrize("method", METHODS)
def test_cli_runs_each_method_and_saves_the_ordinary_network(method, strategy, tmp_path):
    overrides = [
        *TINY,
        f"trainer.method={method}",
        f"strategy.name={strategy}",
        "engine.track_memory=true",
    ]
    args = ["run", str(QUICKSTART), "--quiet", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, *(a for o in overrides for a in ("--set", o))])
    assert result.exit_code == 0, result.output
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert (metrics["peak_activation_bytes"] > 0).all() and (metrics["model_state_bytes"] > 0).all()
    config = load_config(tmp_path / "config.toml")
    network = build_model(config.model, (1, 8, 8), 10, seed=0)
    network.load_state_dict(load_weights(tmp_path))


def test_memory_is_not_metered_unless_asked():
    sim = Simulation(small_config(*TINY, "trainer.method=dgl"))
    sim.run()
    assert sim.history.records[-1]["peak_activation_bytes"] == 0


# ---------------------------------------------------------------------- mistakes


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.method=infopro"], "trainer.method must be one of dgl, auglocal, man; got 'infopro'"),
        (["trainer.aux=shared"], "trainer.aux must be one of federated, local, frozen; got 'shared'"),
        (["trainer.blocks=0"], "blocks must be >= 1"),
        (["trainer.ema_momentum=2"], "ema_momentum must be in \\[0, 1\\]"),
        (["trainer.recon_weight=[1]"], "recon_weight must be \\[first, last\\] weights >= 0"),
        (
            ["trainer.recon_weight=[0,1]", "trainer.ce_weight=[0,1]"],
            "recon_weight \\+ ce_weight must be > 0",
        ),
        (["engine.backend=vectorized"], "vectorized backend cannot run; set engine.backend=serial"),
    ],
)
def test_bad_settings_fail_validation(overrides, message):
    base = ["trainer.name=local_learning", "trainer.method=dgl", "engine.device=cpu"]
    with pytest.raises(ConfigError, match=message):
        validate(load_config(QUICKSTART, [*base, *overrides]))


def test_auto_backend_takes_serial_for_local_learning():
    sim = Simulation(small_config(*TINY, "trainer.method=dgl", "engine.backend=auto"))
    assert isinstance(make_backend("auto", sim.task), SerialBackend)


def test_a_model_without_a_split_is_refused():
    with pytest.raises(ConfigError, match="no layer split"):
        split_layers(nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="no layer split"):
        split_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_more_blocks_than_layers_is_one_line_and_exit_2(tmp_path):
    overrides = [
        "model.hidden=[16,16]",
        "trainer.name=local_learning",
        "trainer.method=auglocal",
        "trainer.blocks=3",
    ]
    args = ["run", str(QUICKSTART), "--out", str(tmp_path), *(a for o in overrides for a in ("--set", o))]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.blocks=3 but the model splits into only 2 layer(s)" in lines[0], (
        result.stderr
    )
