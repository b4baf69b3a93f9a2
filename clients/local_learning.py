"""Supervised local learning: a client-side memory saver that composes with every strategy.

The network is split into K gradient-isolated blocks. Each block but the last trains on its own
auxiliary loss with its input detached; the last block trains the network's own head on the
strategy's objective. One forward pass per minibatch computes block after block, and each
block's gradient is taken (and its graph freed) before the next block runs, so only one block's
activations are alive during backward.

- `split_layers` cuts a registered model into layers (MLP: each hidden layer; CNN: each conv
  stage; ResNets: the stem and each residual block) and its head; K blocks group the layers.
- `build_training_model` wraps the network and its auxiliary nets in a `LocalLearningNet`,
  whose forward is the network's, so evaluation is unchanged.
- `local_learning_grad_fn` is the block-wise `grad_fn(params, batch) -> (loss, grads)` that
  `Task.grad_fn` hands to backends; strategies only see gradients, so SCAFFOLD's correction,
  FedSpeed's ascent step, FedProx's prox term... apply as with backprop.
- `federate` decides what is federated: with `aux = "federated"` the auxiliary nets are params
  like the backbone; with `"local"` (kept per client) or `"frozen"` (the server's initial copy,
  sent each round, trained within the round, never uploaded) they leave the params, and `LocalLearningStrategy` keeps them; so it does MAN's EMA
  copies, which are reset from the received global model each round and never sent.

Methods and defaults: docs/local_learning.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
from fedsim.gradients import Objective
from clients.semi_supervised import SemiSupervisedStrategy
from fedsim import seeding, tree
from fedsim.config import LocalLearningConfig, ModelConfig
from fedsim.errors import ConfigError
from fedsim.models import BasicBlock, build_model
from fedsim.strategy import Aggregate, Batch, GradFn, LocalContext, LocalSummary, RoundInfo, State, Strategy
from fedsim.tree import Params

METHODS: dict[str, str] = {
    "none": "plain backpropagation",
    "dgl": "DGL: a small conv + MLP classifier per block",
    "auglocal": "AugLocal: fresh copies of uniformly sampled later layers + a linear head, pyramidal depth",
    "man": "MAN: EMA copy of the next block's first layer + a learnable bias, InfoPro's loss",
}
AUX_MODES: dict[str, str] = {
    "federated": "auxiliary nets are averaged like the backbone",
    "local": "each client keeps its own auxiliary nets; never sent",
    "frozen": "the server's initial auxiliary nets are sent each round, trained locally, never uploaded",
}
PRIVATE_AUX = "local_learning_aux"  # state group: auxiliary nets kept out of the federated params
EMA = "local_learning_ema"  # carry group: MAN's EMA copies during a client's round

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
    ends with the head. `config` is the run's `client.local_learning` section.
    """

    def __init__(
        self,
        backbone: nn.Sequential,
        aux: list[nn.Module],
        module_ranges: list[tuple[int, int]],
        config: LocalLearningConfig,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.aux = nn.ModuleList(aux)
        self.module_ranges = module_ranges
        self.config = config

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


def build_training_model(
    model_cfg: ModelConfig,
    local_cfg: LocalLearningConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
) -> nn.Module:
    """The network clients train: `build_model`'s, wrapped with auxiliary nets when
    `local_cfg.method` is not "none". Auxiliary nets are seeded from (seed, "local_learning")."""
    backbone = build_model(model_cfg, input_shape, num_classes, seed)
    if local_cfg.method == "none":
        return backbone
    split = split_layers(backbone, f"model '{model_cfg.name}'")
    num_layers, num_blocks = len(split), local_cfg.blocks
    if num_blocks > num_layers:
        raise ConfigError(
            f"client.local_learning.blocks={num_blocks} but model '{model_cfg.name}' splits into only "
            f"{num_layers} layer(s); use blocks <= {num_layers}"
        )
    layers = [backbone[start:stop] for start, stop in split]
    shapes, shape = [], tuple(input_shape)
    for layer in layers:
        shape = output_shape(layer, shape)
        shapes.append(shape)
    depths = pyramid_depths(local_cfg.depth, local_cfg.pyramid_coeff, num_blocks - 1)
    aux = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.derive_seed(seed, "local_learning"))
        for k, (_, stop) in enumerate(block_layers(num_layers, num_blocks)[:-1]):
            last = stop - 1  # the block's last layer
            if local_cfg.method == "dgl":
                aux.append(ClassifierLoss(dgl_head(shapes[last], num_classes)))
            elif local_cfg.method == "auglocal":
                aux.append(auglocal_net(layers, shapes, last, depths[k], num_classes))
            else:
                recon, ce = (
                    man_weight(w, k, num_blocks - 1) for w in (local_cfg.recon_weight, local_cfg.ce_weight)
                )
                aux.append(ManAux(layers[stop], shapes[last], tuple(input_shape), num_classes, recon, ce))
    return LocalLearningNet(backbone, aux, block_module_ranges(split, num_blocks, len(backbone)), local_cfg)


def network_params(model: nn.Module, params: Params) -> Params:
    """The params of the ordinary network (what `build_model` builds), without auxiliary nets."""
    if not isinstance(model, LocalLearningNet):
        return params
    return {k.removeprefix("backbone."): v for k, v in params.items() if k.startswith("backbone.")}


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
    """What `Task.grad_fn(functional=True)` gives a local-learning model: it fails when called, so
    `engine.backend = "auto"` finds the model does not vectorize and takes the serial backend."""
    raise ConfigError("local learning runs on the serial, ray and flower backends, not the vectorized one")


# ---------------------------------------------------------------------- what is federated


@dataclass
class LocalLearningStrategy(Strategy):
    """Wraps `inner` for the parts of local learning that are not gradients.

    - `aux_mode = "local"`: each client's auxiliary nets live in its state (`PRIVATE_AUX`),
      starting from `private_aux` (the seeded initialisation); they are never uploaded.
    - `aux_mode = "frozen"`: the server's auxiliary nets (`private_aux`, never changed) are
      broadcast; each client starts its round from them and discards its trained copy.
    In both modes the auxiliary nets take plain SGD steps at the round's lr on their own
    gradients during a client's round (no momentum or weight decay, no strategy correction).
    - `ema_sources` (MAN): at each round's start a client copies the EMA layers from the received
      global model; after each step's gradient, ema <- m ema + (1 - m) layer (pre-step weights).

    The inner strategy sees only the federated params and its own state, carry and broadcast.
    """

    inner: Strategy
    aux_mode: str = "federated"
    private_aux: Params = field(default_factory=dict)
    ema_sources: dict[str, str] = field(default_factory=dict)
    ema_momentum: float = 0.995

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def needs_all_uploads(self) -> bool:
        return self.inner.needs_all_uploads

    @staticmethod
    def _own(state: State) -> State:
        return {g: p for g, p in state.items() if g not in (PRIVATE_AUX, EMA)}

    def _inner_ctx(self, ctx: LocalContext) -> LocalContext:
        return LocalContext(ctx.global_params, self._own(ctx.broadcast), self._own(ctx.client_state), ctx.lr)

    def validate(self) -> None:
        self.inner.validate()

    # ---- server side
    def init_server_state(self, params: Params) -> State:
        state = self.inner.init_server_state(params)
        return {**state, PRIVATE_AUX: tree.clone(self.private_aux)} if self.aux_mode == "frozen" else state

    def broadcast(self, server_state: State) -> State:
        sent = self.inner.broadcast(self._own(server_state))
        return {**sent, PRIVATE_AUX: server_state[PRIVATE_AUX]} if self.aux_mode == "frozen" else sent

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        params, state = self.inner.server_update(params, self._own(server_state), aggregate, info)
        if self.aux_mode == "frozen":
            state = {**state, PRIVATE_AUX: server_state[PRIVATE_AUX]}
        return params, state

    # ---- client side
    def init_client_state(self, params: Params) -> State:
        state = self.inner.init_client_state(params)
        return {**state, PRIVATE_AUX: tree.clone(self.private_aux)} if self.aux_mode == "local" else state

    def objective(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.inner.objective(logits, targets)

    def client_begin(self, ctx: LocalContext) -> State:
        carry = dict(self.inner.client_begin(self._inner_ctx(ctx)))
        if self.aux_mode == "local":
            carry[PRIVATE_AUX] = ctx.client_state[PRIVATE_AUX]
        elif self.aux_mode == "frozen":
            carry[PRIVATE_AUX] = ctx.broadcast[PRIVATE_AUX]
        if self.ema_sources:
            carry[EMA] = {e: ctx.global_params[s] for e, s in self.ema_sources.items()}
        return carry

    def local_step(
        self, params: Params, batch: Batch, grad_fn: GradFn, carry: State, ctx: LocalContext
    ) -> tuple[torch.Tensor, Params, State]:
        private, ema = carry.get(PRIVATE_AUX, {}), carry.get(EMA, {})
        private_grads: Params = {}

        def federated_grad_fn(p: Params, b: Batch) -> tuple[torch.Tensor, Params]:
            loss, grads = grad_fn({**p, **private, **ema}, b)
            for name in private:  # keep the first call's: at the client's current params
                private_grads.setdefault(name, grads.pop(name))
            return loss, grads

        loss, direction, inner_carry = self.inner.local_step(
            params, batch, federated_grad_fn, self._own(carry), self._inner_ctx(ctx)
        )
        carry = dict(inner_carry)
        if private:
            carry[PRIVATE_AUX] = tree.add(private, private_grads, -ctx.lr)
        if ema:
            current = {e: params[s] for e, s in self.ema_sources.items()}
            carry[EMA] = tree.lerp(ema, current, 1.0 - self.ema_momentum)
        return loss, direction, carry

    def client_end(
        self, params: Params, carry: State, ctx: LocalContext, summary: LocalSummary
    ) -> tuple[State, State]:
        upload, state = self.inner.client_end(params, self._own(carry), self._inner_ctx(ctx), summary)
        if self.aux_mode == "local":
            state = {**state, PRIVATE_AUX: carry[PRIVATE_AUX]}
        return upload, state

    def upload_weights(self, num_samples: int) -> dict[str, float]:
        return self.inner.upload_weights(num_samples)


def federate(strategy: Strategy, model: nn.Module, params: Params) -> tuple[Strategy, Params]:
    """The strategy and the federated (global) params of a run.

    An ordinary network: both unchanged. A `LocalLearningNet`: MAN's EMA copies, and with
    `aux = "local" | "frozen"` the auxiliary nets, leave the params; `LocalLearningStrategy` then
    wraps the strategy to keep them.
    """
    if not isinstance(model, LocalLearningNet):
        return strategy, params
    if isinstance(strategy, SemiSupervisedStrategy):
        raise ConfigError(
            f"client.local_learning does not combine with the semi-supervised strategy '{strategy.name}'"
        )
    cfg, ema = model.config, model.ema_sources()
    private = {}
    if cfg.aux != "federated":
        private = {k: v for k, v in params.items() if k.startswith("aux.") and k not in ema}
    federated = {k: v for k, v in params.items() if k not in ema and k not in private}
    if not ema and not private:
        return strategy, federated
    return LocalLearningStrategy(strategy, cfg.aux, tree.clone(private), ema, cfg.ema_momentum), federated
