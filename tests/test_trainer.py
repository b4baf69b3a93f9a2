"""The client trainer's pieces: the local schedule, the SGD update, the gradient functions, the loop."""

import pytest
import torch
from torch import nn

from fedsim import tree
from fedsim.gradients import autograd_grad_fn, functional_grad_fn
from fedsim.schedule import LocalSchedule, batch_seeds, client_batches, cohort_batches
from fedsim.strategy import LocalContext, Strategy
from fedsim.trainer import SGDSettings, join_state, sgd_update, split_state
from tests.conftest import train_one


def test_step_count_is_epochs_times_ceil_batches_or_fixed_steps():
    assert LocalSchedule(epochs=2, steps=0, batch_size=32).num_steps(70) == 6
    assert LocalSchedule(epochs=2, steps=5, batch_size=32).num_steps(70) == 5


def test_partial_work_scales_steps_and_keeps_at_least_one():
    schedule = LocalSchedule(epochs=2, steps=0, batch_size=32)
    assert schedule.num_steps(70, work=0.5) == 3
    assert schedule.num_steps(70, work=0.01) == 1


def test_batches_cover_each_epoch_once_and_are_seeded():
    batches = client_batches(10, 6, 4, seed=7)
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat(batches[:3]).tolist()) == list(range(10))
    assert sorted(torch.cat(batches[3:]).tolist()) == list(range(10))
    again = client_batches(10, 6, 4, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert not all(torch.equal(a, b) for a, b in zip(batches, client_batches(10, 6, 4, seed=8)))


def test_fixed_steps_run_past_an_epoch():
    assert [len(b) for b in client_batches(10, 5, 4, seed=0)] == [4, 4, 2, 4, 4]


def test_a_batch_order_is_a_torch_permutation_per_epoch_from_the_client_seed():
    """The layout a third party can reproduce: randperm(n) per epoch from one generator."""
    seed = int(batch_seeds(3, "shuffle", 2, [5])[0])
    generator = torch.Generator().manual_seed(seed)
    expected = torch.cat([torch.randperm(10, generator=generator) for _ in range(2)])
    assert torch.equal(torch.cat(client_batches(10, 6, 4, seed)), expected)


@pytest.mark.parametrize("works", [[1.0, 1.0, 1.0], [0.3, 1.0, 0.6]])
def test_cohort_batches_equal_each_client_planned_alone(works):
    schedule = LocalSchedule(epochs=2, steps=0, batch_size=4)
    sizes, ids = [10, 3, 7], [4, 0, 9]
    together = cohort_batches(schedule, 1, 3, ids, sizes, works)
    for cid, n, w, batches in zip(ids, sizes, works, together):
        alone = client_batches(n, schedule.num_steps(n, w), 4, int(batch_seeds(1, "shuffle", 3, [cid])[0]))
        assert len(batches) == len(alone) and all(torch.equal(a, b) for a, b in zip(batches, alone))


def test_sgd_update_matches_torch_sgd_with_weight_decay_and_momentum():
    torch.manual_seed(0)
    w = torch.randn(5)
    grads = [torch.randn(5) for _ in range(3)]
    sgd = SGDSettings(weight_decay=0.1, momentum=0.9)
    params, opt = {"w": w.clone()}, {}
    for g in grads:
        params, opt = sgd_update(params, {"w": g}, opt, 0.05, sgd)
    ref = w.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([ref], lr=0.05, weight_decay=0.1, momentum=0.9)
    for g in grads:
        ref.grad = g.clone()
        optimizer.step()
    torch.testing.assert_close(params["w"], ref.detach())


def test_clipping_bounds_the_step():
    params, _ = sgd_update({"w": torch.zeros(2)}, {"w": torch.tensor([30.0, 40.0])}, {}, 1.0, SGDSettings(clip_norm=1.0))
    torch.testing.assert_close(params["w"], torch.tensor([-0.6, -0.8]), atol=1e-5, rtol=0)


def test_both_gradient_functions_agree_with_module_backward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    params = tree.clone(dict(model.named_parameters()))
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    for make in (autograd_grad_fn, functional_grad_fn):
        got_loss, grads = make(model, nn.functional.cross_entropy)(params, (x, y))
        torch.testing.assert_close(got_loss, loss.detach())
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad)


def test_the_local_loop_equals_a_hand_written_sgd_loop():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    params = tree.clone(dict(model.named_parameters()))
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    schedule = LocalSchedule(epochs=2, steps=0, batch_size=4)
    strategy = Strategy()
    ctx = LocalContext(params, {}, {}, 0.1, 0)
    result = train_one(strategy, autograd_grad_fn(model, strategy.objective), (x, y), ctx, schedule, client_id=3)

    ref = nn.Linear(4, 3)
    ref.load_state_dict(params)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for idx in client_batches(10, 6, 4, int(batch_seeds(0, "shuffle", 1, [3])[0])):
        opt.zero_grad()
        nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
        opt.step()
    assert result.num_steps == 6 and result.num_samples == 10
    for name, p in ref.named_parameters():
        torch.testing.assert_close(params[name] - result.upload["delta"][name], p.detach())


def test_strategy_and_trainer_state_groups_round_trip():
    c, m = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    stored = join_state({"c": c}, {"m": m})
    assert sorted(stored) == ["c", "trainer.m"]
    strategy_state, trainer_state = split_state(stored)
    assert strategy_state == {"c": c} and trainer_state == {"m": m}


def test_tree_add_with_a_number_or_a_tensor_scale_is_a_plus_scale_b():
    a, b = {"w": torch.randn(5, 3)}, {"w": torch.randn(5, 3)}
    for scale in (-0.05, torch.tensor(-0.05)):
        assert torch.allclose(tree.add(a, b, scale)["w"], a["w"] - 0.05 * b["w"], atol=1e-7)
