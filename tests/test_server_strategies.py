"""The server-side baselines (adaptive server optimisers, robust aggregation) against Flower 1.42,
against hand computations on tiny tensors, and end to end through the engine.

Parity: the same client models go to Flower's own strategy (`flwr.server.strategy`'s
`aggregate_fit`, or `flwr.serverapp.strategy`'s `aggregate_train`) and to fedsim's `server_update`
for 3 rounds, in float64; the global parameters must agree within 1e-6 every round.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass

import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import strategy as flwr_strategy
from flwr.serverapp import strategy as flwr_serverapp

from fedsim import tree
from fedsim.aggregate import WeightedSum
from fedsim.engine import Simulation
from fedsim.errors import ConfigError
from fedsim.plugins import build_strategy
from fedsim.strategy import Aggregate, RoundInfo
from fedsim.validate import validate
from strategies.bulyan import Bulyan
from strategies.fedadagrad import FedAdagrad
from strategies.fedadam import FedAdam
from strategies.fedmedian import FedMedian
from strategies.fedtrimmedavg import FedTrimmedAvg
from strategies.fedyogi import FedYogi
from strategies.krum import Krum


PARITY_TOL = 1e-6
SIZES = (5, 9, 2, 7, 4, 8, 3, 6, 5, 30, 1)  # sample counts of 11 clients


def server_round(strategy, params, state, clients, round_):
    """fedsim's server side of one round, fed client models `clients` = [(y_i, n_i)]."""
    uploads = [{"delta": tree.sub(params, y)} for y, _ in clients]
    total = WeightedSum()
    for upload, (_, n) in zip(uploads, clients):
        total.add(upload, strategy.upload_weights(n))
    aggregate = Aggregate(total.means(torch.float64), uploads if strategy.needs_all_uploads else None,
                          [n for _, n in clients])
    info = RoundInfo(round_, 0.1, len(clients), len(clients), 0)
    return strategy.server_update(params, state, aggregate, info)


def client_models(params, sizes, generator):
    """Client models near the global one; the last two are far off, as attackers' would be."""
    models = []
    for i, n in enumerate(sizes):
        spread = 3.0 if i >= len(sizes) - 2 else 0.1
        noise = {k: torch.randn(v.shape, generator=generator, dtype=torch.float64) for k, v in params.items()}
        models.append((tree.add(params, noise, spread), n))
    return models


def legacy(flower):
    """One round of a `flwr.server.strategy` strategy: its `aggregate_fit` on the client models."""
    def round_(server_round_, clients):
        results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([v.numpy() for v in y.values()]),
                                 n, {}))
                   for y, n in clients]
        aggregated, _ = flower.aggregate_fit(server_round_, results, [])
        return parameters_to_ndarrays(aggregated)
    return round_


@dataclass
class Reply:
    """What a `flwr.serverapp.strategy` strategy reads of a reply (a real Message needs a SuperLink)."""

    content: RecordDict

    def has_error(self) -> bool:
        return False


def message_api(flower):
    """One round of a `flwr.serverapp.strategy` strategy: its `aggregate_train` on the client models.

    Flower's Bulyan runs `gc.collect()` once per reply (`to_numpy_ndarrays(keep_input=False)`);
    freezing the objects already alive keeps each collection from scanning the whole test session
    (5 s -> 0.05 s for three rounds).
    """
    def round_(server_round_, clients):
        replies = [Reply(RecordDict({"arrays": ArrayRecord({k: Array(v.numpy()) for k, v in y.items()}),
                                     "metrics": MetricRecord({"num-examples": n})}))
                   for y, n in clients]
        gc.freeze()
        try:
            aggregated, _ = flower.aggregate_train(server_round_, replies)
        finally:
            gc.unfreeze()
        return [a.numpy() for a in aggregated.values()]
    return round_


def start_params():
    generator = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 4, generator=generator, dtype=torch.float64),
            "b": torch.randn(4, generator=generator, dtype=torch.float64)}


def initial():
    """Flower's FedOpt strategies are given the round-0 parameters, the ones parity_gap starts from."""
    return ndarrays_to_parameters([v.numpy() for v in start_params().values()])


def parity_gap(ours, flower_round, sizes=SIZES, rounds=3):
    """Largest |fedsim - Flower| over the global parameters of `rounds` rounds fed the same clients."""
    generator = torch.Generator().manual_seed(1)
    params = start_params()
    state = ours.init_server_state(params)
    gap = 0.0
    for round_ in range(1, rounds + 1):
        clients = client_models(params, sizes, generator)
        expected = flower_round(round_, clients)
        params, state = server_round(ours, params, state, clients, round_)
        for got, want in zip(params.values(), expected):
            gap = max(gap, float((got - torch.from_numpy(want)).abs().max()))
    return gap


ADAPTIVE = {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-2}  # off Flower's defaults
PARITY = {  # case -> () -> (fedsim strategy, one round of Flower's); called only when Flower is installed
    "fedadam": lambda: (FedAdam(**ADAPTIVE, variant="flwr"),
                        legacy(flwr_strategy.FedAdam(initial_parameters=initial(), **ADAPTIVE))),
    "fedyogi": lambda: (FedYogi(**ADAPTIVE, variant="flwr"),
                        legacy(flwr_strategy.FedYogi(initial_parameters=initial(), **ADAPTIVE))),
    "fedadagrad": lambda: (FedAdagrad(eta=0.05, tau=1e-2, variant="flwr"), legacy(
        flwr_strategy.FedAdagrad(initial_parameters=initial(), eta=0.05, tau=1e-2))),
    "fedmedian": lambda: (FedMedian(), legacy(flwr_strategy.FedMedian())),
    "fedtrimmedavg": lambda: (FedTrimmedAvg(beta=0.2), legacy(flwr_strategy.FedTrimmedAvg(beta=0.2))),
    "krum": lambda: (Krum(num_malicious=2), legacy(flwr_strategy.Krum(num_malicious_clients=2))),
    "multikrum": lambda: (Krum(num_malicious=2, num_selected=4),
                          legacy(flwr_strategy.Krum(num_malicious_clients=2, num_clients_to_keep=4))),
    "multikrum-message-api": lambda: (Krum(num_malicious=2, num_selected=4), message_api(
        flwr_serverapp.MultiKrum(num_malicious_nodes=2, num_nodes_to_select=4))),
    "bulyan": lambda: (Bulyan(num_malicious=2),
                       legacy(flwr_strategy.Bulyan(num_malicious_clients=2, to_keep=0))),
    "bulyan-multikrum-message-api": lambda: (Bulyan(num_malicious=2, selection="multikrum"),
                                             message_api(flwr_serverapp.Bulyan(num_malicious_nodes=2))),
}


@pytest.mark.parametrize("case", list(PARITY))
def test_three_rounds_match_flower(case):
    ours, flower_round = PARITY[case]()
    assert parity_gap(ours, flower_round) < PARITY_TOL


def test_even_cohort_median_matches_flower():
    assert parity_gap(FedMedian(), legacy(flwr_strategy.FedMedian()), sizes=SIZES[:10]) < PARITY_TOL


# ---------------------------------------------------------------------------- rules by hand


def one_coordinate_round(strategy, deltas, sizes):
    """server_update from x = 0 on 1-coordinate client deltas; returns the new x as a float."""
    uploads = [{"delta": {"w": torch.tensor([d], dtype=torch.float64)}} for d in deltas]
    aggregate = Aggregate({}, uploads, list(sizes))
    params, _ = strategy.server_update({"w": torch.zeros(1, dtype=torch.float64)}, {}, aggregate,
                                       RoundInfo(1, 0.1, len(deltas), len(deltas), 0))
    return float(params["w"])


# Two rounds of two clients (n = 1 and 3). Round 1 deltas (0.4, -0.2) and (0.2, 0.6): uniform mean
# g1 = (0.3, 0.2) (the sample-weighted mean would be (0.25, 0.4)); round 2 both (0.01, 0.5) = g2.
# g2^2 = (1e-4, 0.25) lies below v1 in the first coordinate and above it in the second, where
# Yogi's additive step differs from Adam's decay in sign.
G1, G2 = [0.3, 0.2], [0.01, 0.5]


@pytest.mark.parametrize(
    "strategy, m, v",
    [
        pytest.param(FedAdam(), ([0.03, 0.02], [0.028, 0.068]),
                     ([9e-4, 4e-4], [0.99 * 9e-4 + 1e-6, 0.99 * 4e-4 + 2.5e-3]), id="fedadam"),
        pytest.param(FedYogi(), ([0.03, 0.02], [0.028, 0.068]),
                     ([9e-4, 4e-4], [9e-4 - 1e-6, 4e-4 + 2.5e-3]), id="fedyogi"),
        pytest.param(FedAdagrad(), (G1, G2), ([0.09, 0.04], [0.09 + 1e-4, 0.04 + 0.25]), id="fedadagrad"),
    ],
)
def test_paper_variant_two_rounds_by_hand(strategy, m, v):
    x = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    state = strategy.init_server_state(x)
    expected = x["w"]
    rounds = [[(0.4, -0.2), (0.2, 0.6)], [G2, G2]]
    for r, deltas in enumerate(rounds):
        clients = [(tree.sub(x, {"w": torch.tensor(d, dtype=torch.float64)}), n)
                   for d, n in zip(deltas, (1, 3))]
        x, state = server_round(strategy, x, state, clients, r + 1)
        assert state["m"]["w"].tolist() == pytest.approx(m[r])
        assert state["v"]["w"].tolist() == pytest.approx(v[r])
        m_r, v_r = torch.tensor(m[r], dtype=torch.float64), torch.tensor(v[r], dtype=torch.float64)
        expected = expected - strategy.eta * m_r / (v_r.sqrt() + strategy.tau)  # no bias correction
        assert x["w"].tolist() == pytest.approx(expected.tolist())


@pytest.mark.parametrize(
    "strategy, v1",
    [pytest.param(FedAdagrad(v_init=1e-6), 1e-6 + 0.25, id="fedadagrad"),
     pytest.param(FedAdam(v_init=1e-6), 0.99 * 1e-6 + 0.01 * 0.25, id="fedadam")],
)
def test_v_init_is_the_second_moment_before_round_one(strategy, v1):
    """Algorithm 2's v_{-1} >= tau^2 (here tau^2 = 1e-6) instead of the default 0; g1 = 0.5."""
    x = {"w": torch.zeros(1, dtype=torch.float64)}
    state = strategy.init_server_state(x)
    _, state = server_round(strategy, x, state, [({"w": torch.tensor([-0.5], dtype=torch.float64)}, 4)], 1)
    assert float(state["v"]["w"]) == pytest.approx(v1, rel=1e-12, abs=0)


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
    assert one_coordinate_round(FedMedian(), [1.0, 3.0, 2.0, 10.0], [1, 1, 1, 1]) == -2.5
    assert one_coordinate_round(FedMedian(), [1.0, 3.0, 10.0], [1, 1, 1]) == -3.0


@pytest.mark.parametrize("beta, kept_mean", [(0.0, 107 / 5), (0.2, 7 / 3), (0.39, 7 / 3), (0.4, 2.0)])
def test_trimmed_mean_cuts_int_beta_n_from_each_end(beta, kept_mean):
    deltas = [0.0, 100.0, 2.0, 1.0, 4.0]
    assert one_coordinate_round(FedTrimmedAvg(beta=beta), deltas, [9] * 5) == pytest.approx(-kept_mean)


# Five uploads 0, 1, 2, 10, -7 with f = 1: each scores its 5 - 1 - 2 = 2 nearest others,
# 0: 1 + 4 = 5, 1: 1 + 1 = 2, 2: 1 + 4 = 5, 10: 64 + 81, -7: 49 + 64. Krum keeps 1; Multi-Krum
# (m = 3) keeps 1, 0 and 2 (the tie kept in upload order), weighted by n = 1..5 or uniformly.
KRUM_DELTAS, KRUM_SIZES = [0.0, 1.0, 2.0, 10.0, -7.0], [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "strategy, mean",
    [(Krum(num_malicious=1), 1.0), (Krum(num_malicious=1, num_selected=3), (0 * 1 + 1 * 2 + 2 * 3) / 6),
     (Krum(num_malicious=1, num_selected=3, weighting="uniform"), 1.0)],
    ids=["krum", "multikrum", "multikrum-uniform"],
)
def test_krum_scores_by_hand(strategy, mean):
    assert one_coordinate_round(strategy, KRUM_DELTAS, KRUM_SIZES) == pytest.approx(-mean)


# Seven uploads -3, -2, -1, 0, 1, 2, 4 with f = 1: theta = 5, beta = 3; ties go to the earlier
# upload. One Krum pass scores (4 nearest each) 30, 15, 10, 10, 15, 18, 54. Multi-Krum keeps the
# five lowest, -2..2: median 0, nearest three 0, -1, 1, mean 0. Repeated Krum picks -1 (10), then
# from the rest (3 nearest) 0 (9, tied with 2), then (2 nearest) 2 (1 + 4), then (1 nearest)
# -3 (1, tied with -2), then -2: median -1, nearest three -1, -2, 0, mean -1.
@pytest.mark.parametrize("selection, mean", [("krum", -1.0), ("multikrum", 0.0)])
def test_bulyan_selections_by_hand(selection, mean):
    deltas = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0]
    strategy = Bulyan(num_malicious=1, selection=selection)
    assert one_coordinate_round(strategy, deltas, [1] * 7) == pytest.approx(-mean)


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "table, message",
    [
        ({"name": "fedtrimmedavg", "beta": 0.5}, r"strategy.beta must be in \[0, 0.5\), got 0.5"),
        ({"name": "krum", "num_malicious": -1}, "strategy.num_malicious must be >= 0, got -1"),
        ({"name": "krum", "num_selected": 0}, "strategy.num_selected must be >= 1, got 0"),
        ({"name": "krum", "weighting": "median"}, "strategy.weighting must be one of samples, uniform"),
        ({"name": "bulyan", "selection": "bulyan"}, "strategy.selection must be one of krum, multikrum"),
        ({"name": "fedadam", "beta_2": 1.0}, r"strategy.beta_2 must be in \[0, 1\), got 1.0"),
        ({"name": "fedyogi", "tau": 0.0}, "strategy.tau must be > 0, got 0.0"),
        ({"name": "fedadam", "variant": "keras"}, "strategy.variant must be one of paper, flwr"),
        ({"name": "fedadagrad", "v_init": -1.0}, "strategy.v_init must be >= 0, got -1.0"),
        ({"name": "fedadagrad", "beta_2": 0.9}, "unknown config key 'strategy.beta_2'"),
    ],
)
def test_out_of_range_hyperparameters_are_config_errors(table, message):
    with pytest.raises(ConfigError, match=message):
        build_strategy(table)


@pytest.mark.parametrize(
    "strategy, uploads, message",
    [
        (Krum(num_malicious=1), 4,
         r"krum needs more than 2 \* strategy.num_malicious \+ 2 = 4 uploads a round, got 4: raise"),
        (Krum(num_selected=5), 4, "krum keeps strategy.num_selected = 5 uploads but a round has 4"),
        (Bulyan(num_malicious=1), 6,
         r"bulyan needs at least 4 \* strategy.num_malicious \+ 3 = 7 uploads a round, got 6: raise"),
    ],
    ids=["krum", "multikrum", "bulyan"],
)
def test_a_cohort_too_small_is_a_one_line_config_error(strategy, uploads, message):
    with pytest.raises(ConfigError, match=message) as err:
        strategy.validate_uploads(uploads)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("dropout, reporting", [(0.0, 5), (0.4, 3)])
def test_a_too_small_cohort_is_refused_before_any_work(config_factory, dropout, reporting):
    config = config_factory("strategy.name=bulyan", "strategy.num_malicious=1", "train.fraction=0.5",
                            f"train.dropout={dropout}", "model.hidden=[8]")
    with pytest.raises(ConfigError, match=f"bulyan needs at least .* = 7 uploads a round, got {reporting}"):
        validate(config)


@pytest.mark.parametrize(
    "overrides",
    [["strategy.name=fedadam"], ["strategy.name=fedyogi", "strategy.variant=flwr"],
     ["strategy.name=fedadagrad"], ["strategy.name=fedmedian"], ["strategy.name=fedtrimmedavg"],
     ["strategy.name=krum", "strategy.num_malicious=1", "strategy.num_selected=3"],
     ["strategy.name=bulyan", "strategy.num_malicious=1"]],
    ids=lambda o: "-".join(v.split("=")[1] for v in o[:1]),
)
def test_each_strategy_runs_end_to_end(config_factory, overrides):
    sim = Simulation(config_factory(*overrides, "train.rounds=2", "model.hidden=[16]"))
    before = tree.clone(sim.params)
    summary = sim.run()
    assert summary["status"] == "finished" and math.isfinite(summary["final_accuracy"])
    assert float(tree.norm(tree.sub(sim.params, before))) > 0
