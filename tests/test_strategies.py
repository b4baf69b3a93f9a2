"""Built-in strategies against hand-computed rounds, degenerate identities and state handling.

Most tests use quadratic clients f_i(w) = mean_j 0.5 ||w - a_j||^2 over client i's points a_j,
trained full-batch, so one local step is w -= lr * (direction built from w - mean_j a_j).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import vmap

from fedsim.gradients import autograd_grad_fn, functional_grad_fn
from fedsim import tree
from fedsim.aggregate import WeightedSum
from fedsim.engine import Callback, Simulation
from fedsim.errors import ConfigError
from fedsim.schedule import LocalSchedule
from fedsim.plugins import build_strategy
from fedsim.strategy import Aggregate, LocalContext, LocalSummary, RoundInfo
from strategies.fedavg import FedAvg
from tests.conftest import train_one
from fedsim.trainer import ClientTrainer, SGDSettings
from strategies.fedavg_m import FedAvgMomentum
from strategies.fedavgm import FedAvgM
from strategies.feddyn import FedDyn
from strategies.fedld import FedLD, revise_updates
from strategies.fednova import FedNova, effective_steps
from strategies.fedprox import FedProx
from strategies.fedspeed import FedSpeed
from strategies.scaffold import Scaffold
from strategies.scaffold_m import ScaffoldMomentum

LR = 0.1


def quadratic_grad_fn(params, batch):
    """Gradient of mean_j 0.5 ||w - a_j||^2: w - mean_j a_j."""
    a, _ = batch
    w = params["w"]
    loss = 0.5 * ((w - a) ** 2).sum(1).mean()
    return loss, {"w": w - a.mean(0)}


def client_data(*points: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.tensor(points, dtype=torch.float64)
    return a, torch.zeros(len(a), dtype=torch.long)


def run_round(strategy, params, server_state, clients, *, steps, num_clients=None, lr=LR, round_=1,
              grad_fn=quadratic_grad_fn, batch_size=1000):
    """One engine round by hand: clients = {cid: (data, client_state)}. Returns params, state, results."""
    broadcast = strategy.broadcast(server_state)
    schedule = LocalSchedule(epochs=1, steps=steps, batch_size=batch_size)
    total, uploads, results = WeightedSum(), [], {}
    for cid, (data, state) in clients.items():
        ctx = LocalContext(params, broadcast, state, lr, 0)
        result = train_one(strategy, grad_fn, data, ctx, schedule, client_id=cid, round_=round_)
        total.add(result.upload, strategy.upload_weights(result.num_samples))
        uploads.append(result.upload)
        results[cid] = result
    aggregate = Aggregate(total.means(torch.float64), uploads if strategy.needs_all_uploads else None,
                          [r.num_samples for r in results.values()])
    info = RoundInfo(round_, lr, num_clients or len(clients), len(clients), 0)
    params, server_state = strategy.server_update(params, server_state, aggregate, info)
    return params, server_state, results


def w(*values: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float64)}


def close(a, b, **kw):
    for k in a:
        torch.testing.assert_close(a[k], b[k], **kw)


# ---------------------------------------------------------------------------- FedAvgM


def test_fedavgm_two_rounds_match_flower_formula_by_hand():
    strategy = FedAvgM(server_lr=0.5, momentum=0.9)
    x0 = w(1.0, -1.0)
    data = {0: (client_data([0.0, 0.0]), {}), 1: (client_data([2.0, 2.0], [4.0, 0.0]), {})}
    state = strategy.init_server_state(x0)
    x1, state, res = run_round(strategy, x0, state, data, steps=1)
    # one full-batch step: y_i = x - lr (x - abar_i); delta_i = lr (x - abar_i); weights n_i = 1, 2
    d1 = LR * (1 / 3 * (x0["w"] - torch.tensor([0.0, 0.0])) + 2 / 3 * (x0["w"] - torch.tensor([3.0, 1.0])))
    torch.testing.assert_close(x1["w"], x0["w"] - 0.5 * d1)
    x2, state, _ = run_round(strategy, x1, state, data, steps=1, round_=2)
    d2 = LR * (1 / 3 * x1["w"] + 2 / 3 * (x1["w"] - torch.tensor([3.0, 1.0])))
    torch.testing.assert_close(state["v"]["w"], 0.9 * d1 + d2)
    torch.testing.assert_close(x2["w"], x1["w"] - 0.5 * (0.9 * d1 + d2))


def test_fedavgm_matches_flwr_fedavgm_aggregate_fit():
    flwr_strategy = pytest.importorskip("flwr.server.strategy")
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    torch.manual_seed(0)
    params = {"w": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}
    flower = flwr_strategy.FedAvgM(initial_parameters=ndarrays_to_parameters([v.numpy() for v in params.values()]),
                                   server_learning_rate=0.7, server_momentum=0.8)
    ours = FedAvgM(server_lr=0.7, momentum=0.8)
    state = ours.init_server_state(params)
    for round_ in (1, 2, 3):
        clients = [(tree.add(params, {k: torch.randn_like(v) for k, v in params.items()}, 0.1), n) for n in (5, 9, 2)]
        results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([v.numpy() for v in y.values()]), n, {}))
                   for y, n in clients]
        expected, _ = flower.aggregate_fit(round_, results, [])
        total = WeightedSum()
        for y, n in clients:
            total.add({"delta": tree.sub(params, y)}, ours.upload_weights(n))
        info = RoundInfo(round_, LR, 3, 3, 0)
        params, state = ours.server_update(params, state, Aggregate(total.means(torch.float64)), info)
        for got, want in zip(params.values(), parameters_to_ndarrays(expected)):
            torch.testing.assert_close(got, torch.from_numpy(want))


# ---------------------------------------------------------------------------- FedProx


def test_fedprox_local_run_matches_closed_form():
    mu, steps = 0.5, 4
    x0 = w(1.0, 2.0)
    abar = torch.tensor([3.0, -1.0], dtype=torch.float64)
    _, _, res = run_round(FedProx(mu=mu), x0, {}, {0: (client_data(abar.tolist()), {})}, steps=steps)
    # w <- w - lr ((w - abar) + mu (w - x0)): contraction to w* = (abar + mu x0) / (1 + mu)
    w_star = (abar + mu * x0["w"]) / (1 + mu)
    y = w_star + (1 - LR * (1 + mu)) ** steps * (x0["w"] - w_star)
    torch.testing.assert_close(res[0].upload["delta"]["w"], x0["w"] - y)


# ---------------------------------------------------------------------------- SCAFFOLD


def test_scaffold_round_matches_hand_computation_with_partial_participation():
    strategy = Scaffold(server_lr=0.5)
    steps, n_total = 3, 4
    x0 = w(0.5, -0.5)
    c = w(0.2, 0.1)
    c_i = {0: w(-0.1, 0.3), 1: w(0.0, 0.0)}
    abar = {0: torch.tensor([1.0, 1.0]), 1: torch.tensor([-2.0, 0.0])}
    data = {cid: (client_data(abar[cid].tolist()), {"c": c_i[cid]}) for cid in (0, 1)}
    x1, state, res = run_round(strategy, x0, {"c": c}, data, steps=steps, num_clients=n_total)
    deltas, dcs = [], []
    for cid in (0, 1):
        # w <- w - lr (w - abar - c_i + c): contraction to w* = abar + c_i - c
        w_star = abar[cid].double() + c_i[cid]["w"] - c["w"]
        y = w_star + (1 - LR) ** steps * (x0["w"] - w_star)
        c_new = c_i[cid]["w"] - c["w"] + (x0["w"] - y) / (steps * LR)
        torch.testing.assert_close(res[cid].strategy_state["c"]["w"], c_new)
        deltas.append(x0["w"] - y)
        dcs.append(c_new - c_i[cid]["w"])
    torch.testing.assert_close(x1["w"], x0["w"] - 0.5 * (deltas[0] + deltas[1]) / 2)
    torch.testing.assert_close(state["c"]["w"], c["w"] + (dcs[0] + dcs[1]) / n_total)


def test_scaffold_uses_the_real_step_count_and_round_lr():
    strategy = Scaffold()
    x0, abar = w(1.0), [0.0]
    state = strategy.init_client_state(x0)
    for steps, lr in ((1, 0.1), (3, 0.05)):
        _, _, res = run_round(strategy, x0, strategy.init_server_state(x0), {0: (client_data(abar), state)},
                              steps=steps, lr=lr)
        # with c = c_i = 0 the new c_i is the mean gradient along the trajectory
        traj = [1.0 * (1 - lr) ** k for k in range(steps)]
        torch.testing.assert_close(res[0].strategy_state["c"]["w"], torch.tensor([sum(traj) / steps], dtype=torch.float64))


# ---------------------------------------------------------------------------- FedAvg-M / SCAFFOLD-M


@pytest.mark.parametrize("scale", ["local", "absolute"])
def test_fedavg_m_round_matches_closed_form(scale):
    beta, steps = 0.3, 5
    strategy = FedAvgMomentum(beta=beta, server_lr=0.8, server_lr_scale=scale)
    x0 = w(1.0, 0.0)
    g = w(0.5, -1.0)
    state = {"g": g, "mix": {"beta": torch.tensor(beta)}}
    abar = {0: torch.tensor([0.0, 0.0]), 1: torch.tensor([2.0, 4.0])}
    data = {cid: (client_data(a.tolist()), {}) for cid, a in abar.items()}
    x1, state, _ = run_round(strategy, x0, state, data, steps=steps)
    g_clients = []
    for a in abar.values():
        # w <- w - lr (beta (w - abar) + (1 - beta) g): contraction to abar - (1 - beta) g / beta
        w_star = a.double() - (1 - beta) * g["w"] / beta
        y = w_star + (1 - LR * beta) ** steps * (x0["w"] - w_star)
        g_clients.append((x0["w"] - y) / (LR * steps))
    g_new = (g_clients[0] + g_clients[1]) / 2
    gamma = 0.8 * LR * steps if scale == "local" else 0.8
    torch.testing.assert_close(state["g"]["w"], g_new)
    torch.testing.assert_close(x1["w"], x0["w"] - gamma * g_new)


def test_fedavg_m_local_scale_is_mean_steps_times_mean_normalised_delta_in_float64():
    """The documented rule with unequal K_i (2 and 6 steps), to float64 round-off."""
    beta, steps = 0.5, {0: 2, 1: 6}
    strategy = FedAvgMomentum(beta=beta, server_lr=1.0)
    x0 = w(1.0, -1.0)
    state = strategy.init_server_state(x0)
    assert state["mix"]["beta"].dtype == torch.float64
    total = WeightedSum()
    for cid, k in steps.items():
        ctx = LocalContext(x0, strategy.broadcast(state), {}, LR, k)
        result = train_one(strategy, quadratic_grad_fn, client_data([2.0 * cid, 1.0]), ctx,
                           LocalSchedule(epochs=1, steps=k, batch_size=10), client_id=cid)
        total.add(result.upload, strategy.upload_weights(result.num_samples))
    x1, state = strategy.server_update(x0, state, Aggregate(total.means(torch.float64)), RoundInfo(1, LR, 2, 2, 0))
    deltas = {}
    for cid, k in steps.items():  # g = 0 in round 1: plain GD scaled by beta, toward (2 cid, 1)
        target = torch.tensor([2.0 * cid, 1.0], dtype=torch.float64)
        deltas[cid] = (x0["w"] - target) * (1 - (1 - LR * beta) ** k)
    mean_k = (2 + 6) / 2
    want = x0["w"] - mean_k * (deltas[0] / 2 + deltas[1] / 6) / 2
    torch.testing.assert_close(x1["w"], want, rtol=0, atol=1e-15)
    assert state["mix"]["beta"].dtype == torch.float64


def test_fedspeed_refuses_an_infinite_lambda():
    with pytest.raises(ConfigError, match="strategy.lam must be a finite number, got inf"):
        build_strategy({"name": "fedspeed", "lam": float("inf")})


def test_fedavg_m_momentum_init_options():
    x0, data = w(1.0), {0: (client_data([0.0]), {})}
    zero = FedAvgMomentum(beta=0.2)
    warm = FedAvgMomentum(beta=0.2, momentum_init="first_round")
    _, s_zero, _ = run_round(zero, x0, zero.init_server_state(x0), data, steps=1)
    _, s_warm, _ = run_round(warm, x0, warm.init_server_state(x0), data, steps=1)
    torch.testing.assert_close(s_zero["g"]["w"], 0.2 * x0["w"])  # g^0 = 0: only beta * grad
    torch.testing.assert_close(s_warm["g"]["w"], x0["w"])  # round 1 is plain SGD
    assert float(s_warm["mix"]["beta"]) == pytest.approx(0.2)  # momentum from round 2 on


def test_scaffold_m_round_matches_a_hand_loop():
    beta, steps, n_total = 0.4, 3, 5
    strategy = ScaffoldMomentum(beta=beta)
    x0, g, c = w(1.0, -2.0), w(0.3, 0.3), w(0.1, -0.2)
    c_i = {0: w(0.0, 0.5), 3: w(-0.4, 0.0)}
    abar = {0: torch.tensor([0.0, 1.0], dtype=torch.float64), 3: torch.tensor([-1.0, 0.0], dtype=torch.float64)}
    state = {"g": g, "mix": {"beta": torch.tensor(beta)}, "c": c}
    data = {cid: (client_data(abar[cid].tolist()), {"c": c_i[cid]}) for cid in c_i}
    x1, state, res = run_round(strategy, x0, state, data, steps=steps, num_clients=n_total)
    gs, dcs = [], []
    for cid in c_i:
        y, raw = x0["w"].clone(), []
        for _ in range(steps):
            grad = y - abar[cid]
            raw.append(grad)
            y = y - LR * (beta * (grad - c_i[cid]["w"] + c["w"]) + (1 - beta) * g["w"])
        c_new = sum(raw) / steps
        torch.testing.assert_close(res[cid].strategy_state["c"]["w"], c_new)
        gs.append((x0["w"] - y) / (LR * steps))
        dcs.append(c_new - c_i[cid]["w"])
    g_new = (gs[0] + gs[1]) / 2
    torch.testing.assert_close(state["g"]["w"], g_new)
    torch.testing.assert_close(x1["w"], x0["w"] - LR * steps * g_new)
    torch.testing.assert_close(state["c"]["w"], c["w"] + (dcs[0] + dcs[1]) / n_total)


# ---------------------------------------------------------------------------- FedSpeed


def fedspeed_client_by_hand(x0, abar, ghat, lam, steps, ascent):
    """FedSpeed's local loop on a quadratic: `ascent(g1)` gives the quasi-gradient."""
    y = x0.clone()
    for _ in range(steps):
        g1 = y - abar
        y = y - LR * (ascent(g1) - ghat + (y - x0) / lam)
    return y, ghat - (y - x0) / lam


def test_fedspeed_paper_round_matches_hand_computation():
    rho, alpha, lam, steps = 0.2, 0.7, 5.0, 3
    strategy = FedSpeed(rho=rho, alpha=alpha, lam=lam)
    x0 = w(1.0, 1.0)
    ghat = {0: w(0.1, -0.1), 1: w(0.0, 0.0)}
    abar = {0: torch.tensor([0.0, 2.0], dtype=torch.float64), 1: torch.tensor([3.0, 0.0], dtype=torch.float64)}
    data = {cid: (client_data(abar[cid].tolist()), {"ghat": ghat[cid]}) for cid in ghat}
    x1, _, res = run_round(strategy, x0, strategy.init_server_state(x0), data, steps=steps, num_clients=10)
    xhats = []
    for cid in ghat:
        # g2 = grad(w + rho g1) = (1 + rho) g1 on a quadratic; g~ = (1 - alpha) g1 + alpha g2
        y, ghat_new = fedspeed_client_by_hand(x0["w"], abar[cid], ghat[cid]["w"], lam, steps,
                                              lambda g1: (1 + alpha * rho) * g1)
        torch.testing.assert_close(res[cid].strategy_state["ghat"]["w"], ghat_new)
        xhats.append(y - lam * ghat_new)
    torch.testing.assert_close(x1["w"], (xhats[0] + xhats[1]) / 2)


def test_fedspeed_fl_simulator_round_averages_h_over_all_clients():
    rho, lam, steps, n_total = 0.3, 4.0, 2, 4
    strategy = FedSpeed(rho=rho, lam=lam, variant="fl_simulator")
    x0 = w(1.0, 1.0)
    ghat = {0: w(0.1, -0.1), 2: w(0.2, 0.0)}
    h_absent = w(0.5, -0.25)  # sum of h_i = -lam ghat_i of the clients not sampled
    h_sum = tree.add(h_absent, tree.add(ghat[0], ghat[2]), -lam)
    abar = {0: torch.tensor([0.0, 2.0], dtype=torch.float64), 2: torch.tensor([3.0, 0.0], dtype=torch.float64)}
    data = {cid: (client_data(abar[cid].tolist()), {"ghat": ghat[cid]}) for cid in ghat}
    x1, state, res = run_round(strategy, x0, {"h_sum": h_sum}, data, steps=steps, num_clients=n_total)
    ys, h_new = [], h_absent["w"].clone()
    for cid in ghat:
        # normalised ascent, no alpha merge: g2 = g1 (1 + rho / ||g1||)
        y, ghat_new = fedspeed_client_by_hand(x0["w"], abar[cid], ghat[cid]["w"], lam, steps,
                                              lambda g1: g1 * (1 + rho / g1.norm()))
        torch.testing.assert_close(res[cid].strategy_state["ghat"]["w"], ghat_new)
        ys.append(y)
        h_new = h_new - lam * ghat_new
    torch.testing.assert_close(state["h_sum"]["w"], h_new)
    torch.testing.assert_close(x1["w"], (ys[0] + ys[1]) / 2 + h_new / n_total)


def test_fedspeed_variants_agree_under_full_participation_without_ascent():
    x0 = w(1.0, -1.0)
    ghat = {0: w(0.1, 0.0), 1: w(-0.3, 0.2)}
    data = {cid: (client_data([float(cid), 1.0], [2.0, 0.0]), {"ghat": ghat[cid]}) for cid in ghat}
    paper, sim = FedSpeed(rho=0.0), FedSpeed(rho=0.0, variant="fl_simulator")
    h_sum = tree.scale(tree.add(ghat[0], ghat[1]), -sim.lam)
    x_paper, _, _ = run_round(paper, x0, {}, data, steps=3)
    x_sim, _, _ = run_round(sim, x0, {"h_sum": h_sum}, data, steps=3)
    close(x_paper, x_sim)


# ---------------------------------------------------------------------------- FedLD


def test_fedld_margin_objective_batch_and_sample_norms():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 2])
    p = torch.softmax(logits, 1)
    ce = nn.functional.cross_entropy(logits, targets)
    batch = FedLD(margin_penalty=0.1).objective(logits, targets)
    sample = FedLD(margin_penalty=0.1, margin_norm="sample").objective(logits, targets)
    torch.testing.assert_close(batch, ce + 0.1 * math.log(1 + float((p**2).sum())))
    per_sample = [math.log(1 + float((row**2).sum())) for row in p]
    torch.testing.assert_close(sample, ce + 0.1 * sum(per_sample) / 2)


def test_fedld_revision_of_orthogonal_updates():
    a, b, c = 3.0, 2.0, 1.0
    updates = torch.tensor([[a, 0, 0, 0], [0, b, 0, 0], [0, 0, c, 0]], dtype=torch.float64)
    # Gram eigenvalues a^2/3 > b^2/3 > c^2/3 with directions e1, e2, e3; k = int(3 * 0.8) = 2
    # keeps e1, e2; client 3 projects to 0 on both and contributes nothing (no NaN)
    total = a * a + b * b + c * c
    expected = torch.tensor([a**3, b**3, 0, 0], dtype=torch.float64) / (3 * total)
    torch.testing.assert_close(revise_updates(updates, 0.8), expected)
    # with k_proportion = 1 every client keeps its own direction, scaled by s_j / sum(s)
    expected_all = torch.tensor([a**3, b**3, c**3, 0], dtype=torch.float64) / (3 * total)
    torch.testing.assert_close(revise_updates(updates, 1.0), expected_all)


def test_fedld_revision_keeps_identical_updates_and_zero_updates():
    u = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(revise_updates(u.repeat(4, 1), 0.8), u)  # rank 1: zero directions ignored
    torch.testing.assert_close(revise_updates(u[None], 0.8), u)  # one client: k is at least 1
    assert torch.equal(revise_updates(torch.zeros(3, 5), 0.8), torch.zeros(5))


def test_fedld_server_update_plain_mean_first_then_revised_without_nan():
    strategy = FedLD()
    params = {"w": torch.zeros(2, 3), "frozen": torch.ones(4), "scalar": torch.zeros(1)}
    torch.manual_seed(0)
    uploads = [{"delta": {"w": torch.randn(2, 3), "frozen": torch.zeros(4), "scalar": torch.randn(1)}}
               for _ in range(3)]
    total = WeightedSum()
    for up in uploads:
        total.add(up, strategy.upload_weights(10))
    aggregate = Aggregate(total.means(), uploads, [10, 10, 10])
    info = RoundInfo(1, LR, 10, 3, 0)  # a cohort of 3 out of 10 clients
    state = strategy.init_server_state(params)
    first, state = strategy.server_update(params, state, aggregate, info)
    close(first, tree.sub(params, aggregate.means["delta"]))
    assert float(state["active"]["w"]) == 1.0 and float(state["active"]["frozen"]) == 0.0
    state["active"]["frozen"] = torch.tensor(1.0)  # a layer that moved before and is frozen now
    second, _ = strategy.server_update(params, state, aggregate, info)
    assert all(torch.isfinite(v).all() for v in second.values())
    assert torch.equal(second["frozen"], params["frozen"])
    torch.testing.assert_close(second["scalar"], first["scalar"])  # single elements: plain mean
    u = torch.stack([-up["delta"]["w"].reshape(-1) for up in uploads])
    torch.testing.assert_close(second["w"], revise_updates(u, 0.8).reshape(2, 3).float())


# ---------------------------------------------------------------------------- FedNova


def sgd_momentum_by_hand(w0, abar, steps, lr, rho):
    """torch.optim.SGD with momentum rho on 0.5 ||w - abar||^2, full batch."""
    w_, v = w0.clone(), torch.zeros_like(w0)
    for _ in range(steps):
        v = rho * v + (w_ - abar)
        w_ = w_ - lr * v
    return w_


@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_fednova_round_matches_the_papers_rule(rho):
    x = w(0.0, 0.0)
    points = {0: [[1.0, 2.0], [3.0, 0.0]], 1: [[-2.0, 1.0], [0.0, 1.0], [-1.0, -1.0]]}
    steps = {0: 2, 1: 5}  # unequal local work
    trainer = ClientTrainer()
    trainer.sgd = SGDSettings(momentum=rho)
    strategy, total = FedNova(), WeightedSum()
    for cid, pts in points.items():
        result = train_one(strategy, quadratic_grad_fn, client_data(*pts), LocalContext(x, {}, {}, LR, steps[cid]),
                           LocalSchedule(epochs=1, steps=steps[cid], batch_size=100), client_id=cid,
                           trainer=trainer)
        total.add(result.upload, strategy.upload_weights(result.num_samples))
    got, _ = strategy.server_update(x, {}, Aggregate(total.means(torch.float64)), RoundInfo(1, LR, 2, 2, 0))
    # by hand: a_i is the sum of the weights momentum SGD gives the tau_i gradients
    weights = {c: sum((1 - rho ** (steps[c] - k)) / (1 - rho) if rho else 1.0 for k in range(steps[c])) for c in steps}
    p = {0: 2 / 5, 1: 3 / 5}
    deltas = {c: x["w"] - sgd_momentum_by_hand(x["w"], torch.tensor(points[c], dtype=torch.float64).mean(0),
                                              steps[c], LR, rho) for c in points}
    tau_eff = sum(p[c] * weights[c] for c in p)
    want = x["w"] - tau_eff * sum(p[c] * deltas[c] / weights[c] for c in p)
    torch.testing.assert_close(got["w"], want, rtol=0, atol=1e-12)
    for c in steps:
        assert float(effective_steps(steps[c], rho)) == pytest.approx(weights[c], rel=1e-12)
    fedavg = x["w"] - sum(p[c] * deltas[c] for c in p)
    assert not torch.allclose(got["w"], fedavg)  # unequal steps: not FedAvg


# ---------------------------------------------------------------------------- FedDyn


def test_feddyn_two_rounds_match_the_papers_algorithm_under_partial_participation():
    alpha, steps, num_clients = 0.5, 3, 4
    points = {0: [[1.0, 2.0]], 1: [[-2.0, 1.0], [0.0, 1.0]], 2: [[3.0, -1.0]]}
    cohorts = [[0, 1], [1, 2]]
    strategy = FedDyn(alpha=alpha)
    x, server = w(0.0, 0.0), strategy.init_server_state(w(0.0, 0.0))
    states = {}
    hx, h, g = x["w"].clone(), torch.zeros(2, dtype=torch.float64), {c: torch.zeros(2, dtype=torch.float64) for c in points}
    for r, cohort in enumerate(cohorts, 1):
        clients = {c: (client_data(*points[c]), states.get(c, strategy.init_client_state(x))) for c in cohort}
        x, server, results = run_round(strategy, x, server, clients, steps=steps, num_clients=num_clients, round_=r)
        states.update({c: res.strategy_state for c, res in results.items()})
        # by hand: local GD on L_i - <g_i, t> + alpha/2 ||t - x||^2 from t = x
        ys = {}
        for c in cohort:
            abar, t = torch.tensor(points[c], dtype=torch.float64).mean(0), hx.clone()
            for _ in range(steps):
                t = t - LR * ((t - abar) - g[c] + alpha * (t - hx))
            ys[c] = t
        for c in cohort:
            g[c] = g[c] - alpha * (ys[c] - hx)
        h = h - alpha / num_clients * sum(ys[c] - hx for c in cohort)
        hx = sum(ys.values()) / len(cohort) - h / alpha
        torch.testing.assert_close(x["w"], hx, rtol=0, atol=1e-12)
        torch.testing.assert_close(server["h"]["w"], h, rtol=0, atol=1e-12)
        for c in cohort:
            torch.testing.assert_close(states[c]["g"]["w"], g[c], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- identities


def linear_clients(num, n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)) for _ in range(num)]


def run_rounds(strategy, clients, rounds, *, num_clients=None, cohorts=None, steps=3, batch_size=5, data_seed=0):
    """Train a linear classifier for some rounds; returns params, server state, client states."""
    model = nn.Linear(4, 3).double()
    torch.manual_seed(data_seed)
    params = tree.clone({k: v.detach() for k, v in nn.Linear(4, 3).double().named_parameters()})
    grad_fn = autograd_grad_fn(model, strategy.objective)
    server_state = strategy.init_server_state(params)
    states = {}
    for r in range(1, rounds + 1):
        cohort = cohorts[r - 1] if cohorts else range(len(clients))
        data = {cid: ((clients[cid][0].double(), clients[cid][1]), states.get(cid, strategy.init_client_state(params)))
                for cid in cohort}
        params, server_state, res = run_round(strategy, params, server_state, data, steps=steps, round_=r,
                                              num_clients=num_clients or len(clients), grad_fn=grad_fn,
                                              batch_size=batch_size)
        states.update({cid: result.strategy_state for cid, result in res.items()})
    return params, server_state, states


@pytest.mark.parametrize(
    "strategy",
    [FedAvgMomentum(beta=1.0), FedProx(mu=0.0), FedAvgM(momentum=0.0, server_lr=1.0), FedNova()],
    ids=["fedavg_m_beta1", "fedprox_mu0", "fedavgm_plain", "fednova_equal_steps"],
)
def test_degenerate_settings_equal_fedavg(strategy):
    clients = linear_clients(3)
    expected, _, _ = run_rounds(FedAvg(), clients, rounds=3)
    got, _, _ = run_rounds(strategy, clients, rounds=3)
    close(got, expected)


def test_scaffold_m_with_beta_one_equals_scaffold_under_partial_participation():
    clients = linear_clients(4)
    cohorts = [[0, 1], [1, 3], [0, 2]]
    p_s, state_s, clients_s = run_rounds(Scaffold(), clients, 3, num_clients=6, cohorts=cohorts)
    p_m, state_m, clients_m = run_rounds(ScaffoldMomentum(beta=1.0), clients, 3, num_clients=6, cohorts=cohorts)
    close(p_m, p_s)
    close(state_m["c"], state_s["c"])
    for cid in clients_s:
        close(clients_m[cid]["c"], clients_s[cid]["c"])


def test_scaffold_with_identical_clients_and_one_step_equals_fedavg():
    clients = linear_clients(1) * 3
    expected, _, _ = run_rounds(FedAvg(), clients, rounds=4, steps=1, batch_size=100)
    got, state, _ = run_rounds(Scaffold(), clients, rounds=4, steps=1, batch_size=100)
    close(got, expected)
    assert tree.norm(state["c"]) > 0  # the control variates were not trivially zero


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "table, message",
    [
        ({"name": "fedavg_m", "beta": 0.0}, r"strategy.beta must be in \(0, 1\], got 0.0"),
        ({"name": "fedavg_m", "beta": 1.5}, r"strategy.beta must be in \(0, 1\], got 1.5"),
        ({"name": "fedavg_m", "server_lr_scale": "relative"}, "strategy.server_lr_scale must be one of local, absolute"),
        ({"name": "scaffold_m", "momentum_init": "gradient"}, "strategy.momentum_init must be one of zero, first_round"),
        ({"name": "fedprox", "mu": -0.1}, "strategy.mu must be >= 0, got -0.1"),
        ({"name": "fedavgm", "momentum": 1.0}, r"strategy.momentum must be in \[0, 1\), got 1.0"),
        ({"name": "scaffold", "server_lr": 0.0}, "strategy.server_lr must be > 0, got 0.0"),
        ({"name": "scaffold", "weighting": "size"}, "strategy.weighting must be one of samples, uniform"),
        ({"name": "fedspeed", "variant": "sam"}, "strategy.variant must be one of paper, fl_simulator; got 'sam'"),
        ({"name": "fedspeed", "lam": 0.0}, "strategy.lam must be > 0"),
        ({"name": "fedld", "k_proportion": 0.0}, r"strategy.k_proportion must be in \(0, 1\]"),
        ({"name": "fedld", "margin_norm": "frobenius"}, "strategy.margin_norm must be one of batch, sample"),
    ],
)
def test_out_of_range_hyperparameters_are_config_errors(table, message):
    with pytest.raises(ConfigError, match=message):
        build_strategy(table)


# ---------------------------------------------------------------------------- engine: client state


class Snapshots(Callback):
    """Client states and server state after every round, with that round's cohort."""

    def __init__(self):
        self.rounds = []

    def on_round_end(self, sim, record):
        states = {cid: {g: tree.clone(p) for g, p in sim.client_states.get(cid).items()}
                  for cid in sim.client_states.client_ids()}
        server = {g: tree.clone(p) for g, p in sim.server_state.items()}
        self.rounds.append((set(sim.sample_clients(record["round"])), states, server))


@pytest.mark.parametrize(
    "name, extra, group, invariant",
    [
        ("scaffold", [], "c", lambda server, states, n: (server["c"], tree.scale(states, 1.0 / n))),
        ("scaffold_m", [], "c", lambda server, states, n: (server["c"], tree.scale(states, 1.0 / n))),
        ("fedspeed", ["strategy.variant=fl_simulator"], "ghat",
         lambda server, states, n: (server["h_sum"], tree.scale(states, -10.0))),
    ],
)
def test_client_state_survives_rounds_and_absence(config_factory, name, extra, group, invariant):
    n = 10
    config = config_factory(f"strategy.name={name}", "train.fraction=0.3", "train.rounds=4", *extra)
    snapshots = Snapshots()
    sim = Simulation(config, [snapshots])
    sim.run()
    seen, previous = set(), {}
    for cohort, states, server in snapshots.rounds:
        seen |= cohort
        assert set(states) == seen  # only participants hold state
        for cid, state in states.items():
            if cid in cohort:
                assert tree.norm(tree.sub(state[group], previous.get(cid, {group: tree.zeros_like(state[group])})[group])) > 0
            else:
                close(state[group], previous[cid][group], rtol=0, atol=0)  # absent: untouched
        total = tree.zeros_like(next(iter(states.values()))[group])
        for state in states.values():
            total = tree.add(total, state[group])
        got, want = invariant(server, total, n)
        close(got, want, rtol=1e-4, atol=1e-6)
        previous = states


# ---------------------------------------------------------------------------- vmap purity


@pytest.mark.parametrize(
    "strategy",
    [FedAvgM(), FedProx(mu=0.1), Scaffold(), FedAvgMomentum(), ScaffoldMomentum(), FedSpeed(),
     FedSpeed(variant="fl_simulator"), FedLD(margin_norm="sample")],
    ids=lambda s: s.name + ("-" + s.variant if isinstance(s, FedSpeed) else ""),
)
def test_client_hooks_run_under_vmap_like_one_client_at_a_time(strategy):
    """The client-side hooks are pure: vmapped over a cohort they give the per-client results."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    params = tree.clone(dict(model.named_parameters()))
    grad_fn = functional_grad_fn(model, strategy.objective)
    server_state = strategy.init_server_state(params)
    broadcast = {g: tree.add(p, {k: torch.randn_like(v) for k, v in p.items()}, 0.1) if g != "mix" else p
                 for g, p in strategy.broadcast(server_state).items()}
    states = [{g: {k: torch.randn_like(v) for k, v in p.items()} for g, p in strategy.init_client_state(params).items()}
              for _ in range(2)]
    xs, ys = torch.randn(2, 2, 5, 4), torch.randint(0, 3, (2, 2, 5))  # (clients, steps, batch, ...)
    summary = LocalSummary(num_steps=2, num_samples=5, lr=LR, momentum=0.0)

    def client(state, xs, ys):
        ctx = LocalContext(params, broadcast, state, LR, len(xs))
        carry, w_ = strategy.client_begin(ctx), params
        for x, y in zip(xs, ys):
            _, direction, carry = strategy.local_step(w_, (x, y), grad_fn, carry, ctx)
            w_ = tree.add(w_, direction, -LR)
        return strategy.client_end(w_, carry, ctx, summary)

    stacked_state = {g: {k: torch.stack([s[g][k] for s in states]) for k in p} for g, p in states[0].items()}
    upload_v, state_v = vmap(client)(stacked_state, xs, ys)
    for i in range(2):
        upload, state = client(states[i], xs[i], ys[i])
        for group in upload:
            close({k: v[i] for k, v in upload_v[group].items()}, upload[group], rtol=1e-5, atol=1e-6)
        for group in state:
            close({k: v[i] for k, v in state_v[group].items()}, state[group], rtol=1e-5, atol=1e-6)
