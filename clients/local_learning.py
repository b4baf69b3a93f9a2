"""Supervised local learning: a client-side memory saver that composes with every strategy.

The network is split into K gradient-isolated blocks. Each block but the last trains on its own
auxiliary loss with its input detached; the last block trains the network's own head on the
strategy's objective. One forward pass per minibatch computes block after block, and each
block's gradient is taken (and its graph freed) before the next block runs, so only one block's
activations are alive during backward.

- `split_layers` cuts a registered model into layers (MLP: each hidden layer; CNN: each conv
  stage; ResNets: the stem and each residual block) and its head; K blocks group the layers.
- `LocalLearning` is the client trainer (`[trainer] name = "local_learning"`):
  - `build_model` wraps the network and its auxiliary nets in a `LocalLearningNet`, whose
    forward is the network's, so evaluation is unchanged;
  - `grad_fn` is the block-wise `local_learning_grad_fn(params, batch) -> (loss, grads)`;
    strategies only see gradients, so SCAFFOLD's correction, FedSpeed's ascent step, FedProx's
    prox term... apply as with backprop;
  - `prepare` decides what is federated: with `aux = "federated"` the auxiliary nets are params
    like the backbone; with `"local"` (kept per client, in the trainer's client state) or
    `"frozen"` (the initial copy, the same on every client, trained within a round, never
    uploaded) they leave the params, and so do MAN's EMA copies, which are reset from the
    received global model each round and never sent.

Methods and defaults: docs/local_learning.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call

from clients.aux_nets import (
    ClassifierLoss,
    ManAux,
    auglocal_net,
    dgl_head,
    man_weight,
    output_shape,
    pyramid_depths,
)
from fedsim import seeding, tree
from fedsim.config import option
from fedsim.errors import ConfigError
from fedsim.gradients import Objective
from fedsim.models import BasicBlock
from fedsim.strategy import Batch, GradFn, LocalContext, LocalSummary, State, Strategy
from fedsim.trainer import ClientTrainer
from fedsim.tree import Params

METHODS: dict[str, str] = {
    "dgl": "DGL: a small conv + MLP classifier per block",
    "auglocal": "AugLocal: fresh copies of uniformly sampled later layers + a linear head, pyramidal depth",
    "man": "MAN: EMA copy of the next block's first layer + a learnable bias, InfoPro's loss",
}
AUX_MODES: dict[str, str] = {
    "federated": "auxiliary nets are averaged like the backbone",
    "local": "each client keeps its own auxiliary nets; never sent",
    "frozen": "the server's initial auxiliary nets are sent each round, trained locally, never uploaded",
}
PRIVATE_AUX = "aux"  # trainer state / optimiser group: auxiliary nets kept out of the federated params
EMA = "ema"  # optimiser group: MAN's EMA copies during a client's round

_WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd, BasicBlock)
_HEAD_START = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten)


# ---------------------------------------------------------------------- splitting a network


def split_layers(model: nn.Module, name: str = "the model") -> list[tuple[int, int]]:
    """Cut an `nn.Sequential` network into layers: (start, stop) module indices of each; the head
    (global pooling, Flatten, final Linear) runs from the last layer's stop to the end.

    A layer starts at each Linear, convolution or residual block and takes the modules after it
    (norm, activation, pooling) up to the next one; modules before the first (Flatten) join the
    first layer. The last module must be the linear head.
    """
    starts = (
        [i for i, m in enumerate(model) if isinstance(m, _WEIGHT_LAYERS)]
        if isinstance(model, nn.Sequential)
        else []
    )
    if len(starts) < 2 or starts[-1] != len(model) - 1 or not isinstance(model[-1], nn.Linear):
        raise ConfigError(f"{name} has no layer split for local learning; use mlp, cnn or a resnet")
    head_start = next(
        (i for i in range(starts[-2] + 1, starts[-1]) if isinstance(model[i], _HEAD_START)), starts[-1]
    )
    bounds = [0, *starts[1:-1], head_start]
    return [(bounds[j], bounds[j + 1]) for j in range(len(bounds) - 1)]


def block_layers(num_layers: int, num_blocks: int) -> list[tuple[int, int]]:
    """(first, stop) layer indices of each of K contiguous blocks; sizes differ by at most one and
    the larger blocks come last, where a CNN's feature maps are smaller."""
    size, extra = divmod(num_layers, num_blocks)
    bounds = [0]
    for k in range(num_blocks):
        bounds.append(bounds[-1] + size + (k >= num_blocks - extra))
    return [(bounds[k], bounds[k + 1]) for k in range(num_blocks)]


def block_module_ranges(
    layers: list[tuple[int, int]], num_blocks: int, num_modules: int
) -> list[tuple[int, int]]:
    """(start, stop) module indices of each of K blocks of `split_layers`' layers; the last block
    ends with the head, at `num_modules`."""
    ranges = [
        (layers[first][0], layers[stop - 1][1]) for first, stop in block_layers(len(layers), num_blocks)
    ]
    ranges[-1] = (ranges[-1][0], num_modules)
    return ranges


# ---------------------------------------------------------------------- the network


class LocalLearningNet(nn.Module):
    """A network (`backbone`) and the auxiliary nets (`aux[k]`, one per block but the last) that train
    it block-wise. `forward` is the backbone's, so evaluation is that of the ordinary network.

    `module_ranges[k]` = (start, stop) module indices of block k in the backbone; the last block
    ends with the head.
    """

    def __init__(self, backbone: nn.Sequential, aux: list[nn.Module], module_ranges: list[tuple[int, int]]) -> None:
        super().__init__()
        self.backbone = backbone
        self.aux = nn.ModuleList(aux)
        self.module_ranges = module_ranges

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def ema_sources(self) -> dict[str, str]:
        """MAN: each EMA-copy parameter's name -> the backbone parameter it follows."""
        return {
            f"aux.{k}.ema.{name}": f"backbone.{name}"
            for k, aux in enumerate(self.aux)
            if isinstance(aux, ManAux)
            for name, _ in aux.ema.named_parameters()
        }


# ---------------------------------------------------------------------- the gradient function


@dataclass
class _Block:
    """One block's modules and the names of its params (global name -> name in the module)."""

    body: nn.Module
    body_names: dict[str, str]
    aux: nn.Module | None
    aux_names: dict[str, str]
    trainable: list[str]  # all but MAN's EMA copies


def _blocks(model: LocalLearningNet) -> list[_Block]:
    ema = model.ema_sources()
    blocks = []
    for k, (start, stop) in enumerate(model.module_ranges):
        body = model.backbone[start:stop]  # keeps the backbone's module names
        body_names = {f"backbone.{n}": n for n, _ in body.named_parameters()}
        aux = model.aux[k] if k < len(model.aux) else None
        aux_names = {f"aux.{k}.{n}": n for n, _ in aux.named_parameters()} if aux is not None else {}
        trainable = [n for n in (*body_names, *aux_names) if n not in ema]
        blocks.append(_Block(body, body_names, aux, aux_names, trainable))
    return blocks


def local_learning_grad_fn(model: LocalLearningNet, objective: Objective) -> GradFn:
    """Block-wise gradients: block k's params and its auxiliary net's get the gradient of block k's
    local loss alone, computed from the detached output of block k - 1; the last block's loss is
    `objective(logits, y)`, which is also the loss returned. `params` holds every trainable
    parameter of the model (backbone and auxiliary nets) and may hold MAN's EMA copies."""
    blocks = _blocks(model)

    def grad_fn(params: Params, batch: Batch) -> tuple[torch.Tensor, Params]:
        x, y = batch
        h, grads = x, {}
        with torch.enable_grad():
            for block in blocks:
                names = [n for n in (*block.body_names, *block.aux_names) if n in params]
                # EMA copies become leaves too (the memory meter leaves parameters out); only
                # `trainable` ones get gradients
                leaves = {n: params[n].detach().requires_grad_(True) for n in names}
                out = functional_call(
                    block.body, {block.body_names[n]: leaves[n] for n in block.body_names}, (h,)
                )
                if block.aux is None:
                    loss = objective(out, y)
                else:
                    aux_leaves = {block.aux_names[n]: leaves[n] for n in block.aux_names if n in leaves}
                    loss = functional_call(block.aux, aux_leaves, (out, x, y))
                wrt = [leaves[n] for n in block.trainable]
                grads.update(zip(block.trainable, torch.autograd.grad(loss, wrt)))  # frees the block's graph
                h = out.detach()
        return loss.detach(), {n: grads[n] for n in params if n in grads}

    return grad_fn


def unsupported_functional_grad_fn(params: Params, batch: Batch) -> tuple[torch.Tensor, Params]:
    """What `LocalLearning.grad_fn(functional=True)` gives: it fails when called, so nothing
    vmaps block-wise training by accident."""
    raise ConfigError("local learning runs on the serial, ray and flower backends, not the vectorized one")


# ---------------------------------------------------------------------- the client trainer


@dataclass
class LocalLearning(ClientTrainer):
    """Local learning: K gradient-isolated blocks, each trained on its own auxiliary loss.

    `method`: dgl | auglocal | man (docs/local_learning.md); `blocks` = K (the last block trains
    the network's own head); `aux`: federated | local | frozen, what happens to the auxiliary
    nets across rounds. AugLocal: `depth` (d) later layers copied by each auxiliary net, falling
    linearly to d - c (d - 1) with `pyramid_coeff` c. MAN: `ema_momentum` of the copy of the next
    block's first layer; `recon_weight` and `ce_weight`, [first, last] auxiliary net, interpolated.

    With `aux = "local" | "frozen"` the auxiliary nets take plain SGD steps at the round's lr on
    their own gradients during a client's round (no momentum or weight decay, no strategy
    correction); MAN's EMA copies start each round from the received global model and follow
    ema <- m ema + (1 - m) layer after each step's gradient (pre-step weights).
    """

    name: ClassVar[str] = "local_learning"
    vectorizes: ClassVar[bool] = False  # block-wise autograd, one client at a time

    method: str = option("dgl", choices=tuple(METHODS))
    blocks: int = option(2, ge=1)
    aux: str = option("federated", choices=tuple(AUX_MODES))
    depth: int = option(2, ge=1)
    pyramid_coeff: float = option(0.5, ge=0, le=1)
    ema_momentum: float = option(0.995, ge=0, le=1)
    recon_weight: list[float] = option([5.0, 0.5], ge=0)
    ce_weight: list[float] = option([0.5, 1.0], ge=0)

    def __post_init__(self) -> None:
        self.private_aux: Params = {}  # the auxiliary nets' initial copy, when they are not federated
        self.ema_sources: dict[str, str] = {}  # MAN: EMA-copy param -> the backbone param it follows

    def validate(self) -> None:
        for name in ("recon_weight", "ce_weight"):
            pair = getattr(self, name)
            _require(len(pair) == 2, f"trainer.{name} must be [first, last] weights >= 0, got {pair}")
        _require(
            all(r + c > 0 for r, c in zip(self.recon_weight, self.ce_weight)),
            "trainer: recon_weight + ce_weight must be > 0 at both ends, or a block gets no gradient",
        )

    def build_model(
        self, backbone: nn.Module, input_shape: tuple[int, ...], num_classes: int, seed: int
    ) -> nn.Module:
        """The network and its auxiliary nets, seeded from (seed, "local_learning")."""
        split = split_layers(backbone, "the model")
        num_layers, num_blocks = len(split), self.blocks
        if num_blocks > num_layers:
            raise ConfigError(
                f"trainer.blocks={num_blocks} but the model splits into only "
                f"{num_layers} layer(s); use blocks <= {num_layers}"
            )
        layers = [backbone[start:stop] for start, stop in split]
        shapes, shape = [], tuple(input_shape)
        for layer in layers:
            shape = output_shape(layer, shape)
            shapes.append(shape)
        depths = pyramid_depths(self.depth, self.pyramid_coeff, num_blocks - 1)
        aux = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeding.derive_seed(seed, "local_learning"))
            for k, (_, stop) in enumerate(block_layers(num_layers, num_blocks)[:-1]):
                last = stop - 1  # the block's last layer
                if self.method == "dgl":
                    aux.append(ClassifierLoss(dgl_head(shapes[last], num_classes)))
                elif self.method == "auglocal":
                    aux.append(auglocal_net(layers, shapes, last, depths[k], num_classes))
                else:
                    recon, ce = (
                        man_weight(w, k, num_blocks - 1) for w in (self.recon_weight, self.ce_weight)
                    )
                    aux.append(ManAux(layers[stop], shapes[last], tuple(input_shape), num_classes, recon, ce))
        return LocalLearningNet(backbone, aux, block_module_ranges(split, num_blocks, len(backbone)))

    def prepare(self, model: nn.Module, params: Params) -> Params:
        """Keep MAN's EMA copies, and the auxiliary nets unless `aux = "federated"`, on the client."""
        self.ema_sources = model.ema_sources()
        if self.aux != "federated":
            self.private_aux = tree.clone(
                {k: v for k, v in params.items() if k.startswith("aux.") and k not in self.ema_sources}
            )
        return {k: v for k, v in params.items() if k not in self.ema_sources and k not in self.private_aux}

    def network_params(self, params: Params) -> Params:
        """The backbone's params under the plain network's names, without auxiliary nets."""
        return {k.removeprefix("backbone."): v for k, v in params.items() if k.startswith("backbone.")}

    def grad_fn(self, model: nn.Module, objective: Objective, functional: bool = False) -> GradFn:
        return unsupported_functional_grad_fn if functional else local_learning_grad_fn(model, objective)

    def init_state(self, params: Params) -> State:
        return {PRIVATE_AUX: tree.clone(self.private_aux)} if self.aux == "local" else {}

    def begin(self, params: Params, state: State, ctx: LocalContext) -> State:
        opt: State = {}
        if self.aux == "local":
            opt[PRIVATE_AUX] = state[PRIVATE_AUX]
        elif self.aux == "frozen":
            opt[PRIVATE_AUX] = self.private_aux
        if self.ema_sources:
            opt[EMA] = {e: ctx.global_params[s] for e, s in self.ema_sources.items()}
        return opt

    def step(
        self,
        params: Params,
        opt: State,
        carry: State,
        batch: Batch,
        grad_fn: GradFn,
        strategy: Strategy,
        ctx: LocalContext,
    ) -> tuple[torch.Tensor, Params, State, State]:
        """The strategy's step on the federated params; the private nets and EMA copies beside it."""
        private, ema = opt.get(PRIVATE_AUX, {}), opt.get(EMA, {})
        private_grads: Params = {}

        def federated_grad_fn(p: Params, b: Batch) -> tuple[torch.Tensor, Params]:
            loss, grads = grad_fn({**p, **private, **ema}, b)
            for name in private:  # keep the first call's: at the client's current params
                private_grads.setdefault(name, grads.pop(name))
            return loss, grads

        loss, new_params, opt, carry = super().step(params, opt, carry, batch, federated_grad_fn, strategy, ctx)
        if private:
            opt = {**opt, PRIVATE_AUX: tree.add(private, private_grads, -ctx.lr)}
        if ema:
            current = {e: params[s] for e, s in self.ema_sources.items()}
            opt = {**opt, EMA: tree.lerp(ema, current, 1.0 - self.ema_momentum)}
        return loss, new_params, opt, carry

    def end(self, params: Params, opt: State, state: State, summary: LocalSummary) -> State:
        return {PRIVATE_AUX: opt[PRIVATE_AUX]} if self.aux == "local" else state


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
