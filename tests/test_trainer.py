import torch
from torch import nn

from fedsim.gradients import autograd_grad_fn, functional_grad_fn
from clients.trainer import LocalSchedule, apply_step, batch_indices, train_client
from fedsim import tree
from fedsim.strategy import LocalContext, Strategy


def test_step_count_is_epochs_times_ceil_batches_or_fixed_steps():
    assert LocalSchedule(epochs=2, steps=0, batch_size=32).num_steps(70) == 6
    assert LocalSchedule(epochs=2, steps=5, batch_size=32).num_steps(70) == 5


def test_partial_work_scales_steps_and_keeps_at_least_one():
    schedule = LocalSchedule(epochs=2, steps=0, batch_size=32)
    assert schedule.num_steps(70, work=0.5) == 3
    assert schedule.num_steps(70, work=0.01) == 1


def test_batches_cover_each_epoch_once_and_are_seeded():
    batches = list(batch_indices(10, 6, 4, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat(batches[:3]).tolist()) == list(range(10))
    again = list(batch_indices(10, 6, 4, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


def test_fixed_steps_run_past_an_epoch():
    assert [len(b) for b in batch_indices(10, 5, 4, torch.Generator())] == [4, 4, 2, 4, 4]


def test_apply_step_matches_torch_sgd_with_weight_decay_and_momentum():
    torch.manual_seed(0)
    w = torch.randn(5)
    grads = [torch.randn(5) for _ in range(3)]
    schedule = LocalSchedule(epochs=1, steps=0, batch_size=1, weight_decay=0.1, momentum=0.9)
    params, velocity = {"w": w.clone()}, None
    for g in grads:
        params, velocity = apply_step(params, {"w": g}, velocity, 0.05, schedule)
    ref = w.clone().requires_grad_(True)
    opt = torch.optim.SGD([ref], lr=0.05, weight_decay=0.1, momentum=0.9)
    for g in grads:
        ref.grad = g.clone()
        opt.step()
    torch.testing.assert_close(params["w"], ref.detach())


def test_clipping_bounds_the_step():
    schedule = LocalSchedule(epochs=1, steps=0, batch_size=1, clip_norm=1.0)
    params, _ = apply_step({"w": torch.zeros(2)}, {"w": torch.tensor([30.0, 40.0])}, None, 1.0, schedule)
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


def test_train_client_equals_a_hand_written_sgd_loop():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    params = tree.clone(dict(model.named_parameters()))
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    schedule = LocalSchedule(epochs=2, steps=0, batch_size=4)
    strategy = Strategy()
    ctx = LocalContext(params, {}, {}, 0.1)
    result = train_client(
        client_id=3, data=(x, y), strategy=strategy, grad_fn=autograd_grad_fn(model, strategy.objective),
        ctx=ctx, schedule=schedule, seed=0, round_=1,
    )
    from fedsim.seeding import torch_generator

    ref = nn.Linear(4, 3)
    ref.load_state_dict(params)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for idx in batch_indices(10, 6, 4, torch_generator(0, "shuffle", 1, 3)):
        opt.zero_grad()
        nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
        opt.step()
    assert result.num_steps == 6 and result.num_samples == 10
    for name, p in ref.named_parameters():
        torch.testing.assert_close(params[name] - result.upload["delta"][name], p.detach())


def test_tree_add_with_a_number_or_a_tensor_scale_is_a_plus_scale_b():
    a, b = {"w": torch.randn(5, 3)}, {"w": torch.randn(5, 3)}
    for scale in (-0.05, torch.tensor(-0.05)):
        assert torch.allclose(tree.add(a, b, scale)["w"], a["w"] - 0.05 * b["w"], atol=1e-7)
