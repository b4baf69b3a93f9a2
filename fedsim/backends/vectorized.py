"""The vectorized backend: one process trains a whole cohort at once with `torch.func.vmap`.

The cohort is cut, in cohort order, into chunks of at most `engine.max_clients_per_batch`
clients (0: as many as fit a memory budget, `auto_chunk_size`); `fedsim.backends.chunk.ChunkExecutor`
trains each chunk in one vmapped loop, and the chunk's uploads are reduced in float64 like
serial's. Results equal serial's up to float rounding (vmapped kernels sum in another order);
a rerun gives identical results.

`engine.backend = "auto"` (`auto_backend`) takes this backend when all of these hold, else
serial: the federation has more than one client; the trainer vectorizes and
`engine.track_memory` is off (this backend refuses both); one client step costs at most
`AUTO_MAX_STEP_FLOPS` on the device (3x the forward FLOPs of a sample, times the batch size);
and the model trains under vmap. The FLOPs bound is where vmap stops paying: it removes
per-step overhead, which dominates small steps, and costs memory for every client of a chunk.
On 2 CPU cores vectorized rounds were 6-12x faster than serial for the digits MLP (5.5 MFLOP a
step), 1.5x for the mnist1d CNN (24 MFLOP), 1.1x at 96 MFLOP and 0.9x at 381 MFLOP
(docs/backends.md). The CUDA bound is an estimate, not yet measured.
"""

from __future__ import annotations

import ctypes
import math

import torch
from torch import nn
from torch.func import vmap

from fedsim.backends.base import Backend, RoundOutput, RoundPlan, Task
from fedsim.backends.chunk import ChunkExecutor
from fedsim.errors import ConfigError
from fedsim.strategy import GradFn

CPU_MEMORY_BUDGET = 128 << 20  # bytes a chunk may take on the CPU (see `auto_chunk_size`)
GPU_MEMORY_SHARE = 0.5  # share of the GPU's free memory a chunk may take
PARAM_COPIES = 12  # parameter-sized tensors per client: params, grads, direction, velocity, carry, state...
ACTIVATION_COPIES = 3  # an activation, its gradient, and a temporary
AUTO_MAX_STEP_FLOPS = {"cpu": 5e7, "cuda": 1e10}
# glibc mallopt parameters and the values `keep_freed_memory` sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_TRIM_BYTES = 512 << 20  # freed heap memory kept for reuse, up to this much
HEAP_MMAP_BYTES = 32 << 20  # blocks below this come from the heap (glibc's largest mmap threshold)


class VectorizedBackend(Backend):
    """Builds the model and the gradient functions once; trains chunks with vmap."""

    name = "vectorized"

    def __init__(self, task: Task, max_clients_per_batch: int = 0, checked=None) -> None:
        super().__init__(task)
        model, x, _ = checked or vectorizable_model(task)  # `checked`: auto_backend's (model, x, y)
        if task.device.type == "cpu":
            keep_freed_memory()
        self.executor = ChunkExecutor(
            model, task.strategy, task.trainer, task.clients, task.schedule, task.device, task.seed, x, task.attack
        )
        self.chunk_size = max_clients_per_batch or auto_chunk_size(
            model, x[:1], task.schedule.batch_size, task.device
        )

    def run_round(self, plan: RoundPlan) -> RoundOutput:
        return self.run(plan, plan.client_ids)

    def run(self, plan: RoundPlan, client_ids: list[int]) -> RoundOutput:
        """Train `client_ids` in chunks (also a Ray worker's share)."""
        return self.executor.run(plan, client_ids, self.chunk_size, self.task.memory_meter)


def vectorizable_model(
    task: Task, instead: str = "engine.backend=serial"
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The task's model and a probe batch on the device, or a ConfigError saying why the task
    cannot vectorize and to set `instead`."""
    if not task.trainer.vectorizes:
        raise ConfigError(
            f"trainer '{task.trainer.name}' trains one client at a time; the vectorized backend cannot run it; "
            f"use {instead}"
        )
    if task.track_memory:
        raise ConfigError(
            "engine.track_memory meters one client at a time, which the vectorized backend does not train; "
            f"use {instead}"
        )
    model = task.model.to(task.device)
    x, y = probe_batch(task)
    problem = vectorization_problem(model, task.grad_fn(model, functional=True), x, y)
    if problem is not None:
        raise ConfigError(f"the vectorized backend cannot train this model: {problem}; use {instead}")
    return model, x, y


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed chunk-sized blocks for reuse; False where there is no glibc.

    A vmapped step allocates and frees tensors the size of a whole chunk (megabytes) many times
    a round. With glibc's defaults most of them are fresh mmaps, or heap memory trimmed back to
    the OS, whose pages fault in again on first touch: about a fifth of a digits round on the
    CPU. Process-wide: the process keeps up to `HEAP_TRIM_BYTES` of freed memory.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mmap_set = mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_BYTES)
    return bool(mmap_set and mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_BYTES))


def vectorization_problem(model: nn.Module, grad_fn: GradFn, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """None when a vmapped gradient of `model` on two clients' copies of (x, y) works, else what fails.

    Forward hooks track the innermost layer running, so a failure names its layer.
    """
    names = {module: name for name, module in model.named_modules()}
    running: list[nn.Module] = []

    def enter(module, args) -> None:
        running.append(module)

    def leave(module, args, out) -> None:
        running.pop()

    hooks = [
        h
        for m in model.modules()
        for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))
    ]
    params = {k: v.detach().expand(2, *v.shape) for k, v in model.named_parameters()}
    try:
        vmap(grad_fn)(params, (x.expand(2, *x.shape), y.expand(2, *y.shape)))
    except ConfigError as err:  # a gradient function that refuses vmap says why
        return str(err)
    except Exception as err:  # noqa: BLE001 -- any other failure under vmap means: not vectorizable
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if running and running[-1] is not model:
            layer = running[-1]
            return f"layer '{names[layer]}' ({type(layer).__name__}) fails under torch.func.vmap: {reason}"
        return f"it fails under torch.func.vmap: {reason}"
    finally:
        for hook in hooks:
            hook.remove()
    return None


def step_flops(model: nn.Module, x: torch.Tensor, batch_size: int) -> float:
    """FLOPs of one local step on a batch like `x`: 3x the forward FLOPs (forward and backward)
    of a sample, times `batch_size`."""
    return 3 * forward_flops(model, x) / len(x) * batch_size


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Matmul and convolution FLOPs (2 per multiply-add) of the `nn.Linear` and `nn.ConvNd` layers
    in one forward pass on `x`, counted from their output shapes by forward hooks.

    torch's FlopCounterMode counts every op but spends over a second initialising on its first
    use, which every run would pay at start-up; linear and convolution layers are where the
    FLOPs of the models this rule judges are (tests pin the two counts equal on the built-ins).
    """

    def flops(module: nn.Module, out: torch.Tensor) -> int:
        if isinstance(module, nn.Linear):
            return 2 * module.in_features * out.numel()
        return 2 * module.in_channels // module.groups * math.prod(module.kernel_size) * out.numel()

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    return _sum_over_outputs(model, x, layers, flops)


def activation_numel(model: nn.Module, x: torch.Tensor) -> int:
    """Elements of every leaf layer's output in one forward pass on `x`."""
    leaves = [m for m in model.modules() if not any(m.children())]
    return _sum_over_outputs(model, x, leaves, lambda module, out: out.numel())


def _sum_over_outputs(model: nn.Module, x: torch.Tensor, layers: list[nn.Module], measure) -> int:
    """The sum of `measure(layer, output)` over `layers` in one no-grad forward pass on `x`."""
    total = 0

    def add(module: nn.Module, args, out: torch.Tensor) -> None:
        nonlocal total
        total += measure(module, out)

    hooks = [m.register_forward_hook(add) for m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return total


def auto_chunk_size(model: nn.Module, sample: torch.Tensor, batch_size: int, device: torch.device) -> int:
    """Clients per chunk that fit the memory budget: `CPU_MEMORY_BUDGET`, or half the free GPU memory.

    The CPU budget is small on purpose: on 2 cores, 1000 digits-MLP clients trained in chunks of
    225 (the budget's size) at 61 ms a round against 53 ms in one chunk of 1000, with a peak
    memory 120 MB lower (608 against 727 MB for the whole process).

    A client takes `PARAM_COPIES` parameter-sized tensors and, per sample of its batch, its input
    plus `ACTIVATION_COPIES` times the activations of one sample (`sample` is one input, batch 1).
    """
    num_params = sum(p.numel() for p in model.parameters())
    per_sample = sample.numel() + ACTIVATION_COPIES * activation_numel(model, sample)
    per_client = 4 * (PARAM_COPIES * num_params + batch_size * per_sample)
    if device.type == "cuda":
        budget = GPU_MEMORY_SHARE * torch.cuda.mem_get_info(device)[0]
    else:
        budget = CPU_MEMORY_BUDGET
    return max(1, int(budget // per_client))


def auto_backend(task: Task, max_clients_per_batch: int = 0) -> Backend:
    """`engine.backend = "auto"`: the vectorized backend where the module docstring's rule allows, else serial."""
    from fedsim.backends.serial import SerialBackend

    if len(task.clients) > 1:
        try:
            checked = vectorizable_model(task)
        except ConfigError:
            return SerialBackend(task)
        model, x, _ = checked
        if step_flops(model, x, task.schedule.batch_size) <= AUTO_MAX_STEP_FLOPS[task.device.type]:
            return VectorizedBackend(task, max_clients_per_batch, checked)
    return SerialBackend(task)


def probe_batch(task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """Two training samples on the device (one when the federation has one), to try the model on."""
    x, y = task.clients.gather(list(range(min(2, len(task.clients)))), task.device)
    return x[:2], y[:2]
