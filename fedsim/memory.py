"""Training-memory accounting that works on the CPU and on a GPU.

`MemoryMeter` measures, while local training runs inside it:
- the peak bytes of activations autograd keeps for backward, counted with saved-tensor hooks
  (each storage once; parameters, i.e. leaves that require grad, and their views excluded),
  which works on any device;
- on a GPU also the process's `torch.cuda.max_memory_allocated` (it includes everything
  resident on the device, such as the model and the clients' data).

`model_state_bytes` is the static part: parameters, gradients and optimiser state.
Peak training memory of a client is about `model_state_bytes + activation peak`.
"""

from __future__ import annotations

import torch
from torch import nn


class _Saved:
    """A tensor autograd saved for backward; releases its bytes from the meter when autograd drops it."""

    __slots__ = ("meter", "tensor", "key")

    def __init__(self, meter: MemoryMeter, tensor: torch.Tensor, key: int) -> None:
        self.meter, self.tensor, self.key = meter, tensor, key

    def __del__(self) -> None:
        self.meter._release(self.key)


class MemoryMeter:
    """Context manager: `activation_bytes` (peak of saved activations when `activations` is on) and
    `cuda_bytes` (peak allocated on `device`, 0 on the CPU) of the code run inside it.

    Saved-tensor hooks cost a Python call per saved tensor (tens of percent of a tiny model's
    step), hence `activations=False` to keep only the free GPU statistic. They do not run under
    `torch.func` transforms, so the vectorized backend cannot be metered this way.
    """

    def __init__(self, device: torch.device | str = "cpu", activations: bool = True) -> None:
        self.device = torch.device(device)
        self.activations = activations
        self.activation_bytes = 0
        self.cuda_bytes = 0
        self._live = 0
        self._storages: dict[int, list[int]] = {}  # storage address -> [references, bytes]
        self._hooks = None

    def __enter__(self) -> MemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.activations:
            self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._hooks is not None:
            self._hooks.__exit__(*exc)
            self._hooks = None
        if self.device.type == "cuda":
            self.cuda_bytes = torch.cuda.max_memory_allocated(self.device)

    def _pack(self, tensor: torch.Tensor):
        base = tensor if tensor._base is None else tensor._base
        if base.is_leaf and base.requires_grad:  # a parameter: static memory, not an activation
            return tensor
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        entry = self._storages.get(key)
        if entry is None:
            self._storages[key] = [1, storage.nbytes()]
            self._live += storage.nbytes()
            self.activation_bytes = max(self.activation_bytes, self._live)
        else:
            entry[0] += 1
        return _Saved(self, tensor, key)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Saved) else packed

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            del self._storages[key]
            self._live -= entry[1]


def model_state_bytes(model: nn.Module, momentum: bool) -> int:
    """Bytes of the parameters, plus a gradient and (with `momentum`) a velocity per trainable one."""
    copies = 2 + int(momentum)
    return sum(p.numel() * p.element_size() * (copies if p.requires_grad else 1) for p in model.parameters())
