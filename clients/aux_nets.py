"""Auxiliary networks of supervised local learning (DGL, AugLocal, MAN).

An auxiliary net turns the output `h` of one gradient-isolated block into that block's local
loss: its `forward(h, x, y)` returns the loss, given also the batch input `x` (MAN reconstructs
it) and the targets `y`. Architectures follow the reference code (docs/local_learning.md); as
every fedsim model is buffer-free, BatchNorm becomes GroupNorm (convolutions) or LayerNorm
(linear layers). Feature shapes are per sample: (F,), (C, L) or (C, H, W).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.models import BasicBlock

Shape = tuple[int, ...]


def output_shape(module: nn.Module, in_shape: Shape) -> Shape:
    """Per-sample output shape of `module` on inputs shaped `in_shape` (a dry run on zeros)."""
    with torch.no_grad():
        return tuple(module(torch.zeros(2, *in_shape)).shape[1:])


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(2) as in fedsim's ResNets, GroupNorm(1) for an odd channel count."""
    return nn.GroupNorm(2 if channels % 2 == 0 else 1, channels)


def fresh_layer(layer: nn.Sequential, in_shape: Shape) -> nn.Sequential:
    """A new, randomly initialised layer of `layer`'s kind and output width that takes inputs
    shaped `in_shape`; a residual block strides 2 when its width grows (AugLocal's rule)."""
    modules: list[nn.Module] = []
    for module in layer:
        if isinstance(module, nn.Linear):
            if len(in_shape) > 1:
                modules.append(nn.Flatten())
            modules.append(nn.Linear(math.prod(in_shape), module.out_features, bias=module.bias is not None))
        elif isinstance(module, nn.modules.conv._ConvNd):
            modules.append(
                type(module)(
                    in_shape[0],
                    module.out_channels,
                    module.kernel_size,
                    module.stride,
                    module.padding,
                    bias=module.bias is not None,
                )
            )
        elif isinstance(module, BasicBlock):
            cout = module.conv2.out_channels
            modules.append(BasicBlock(in_shape[0], cout, 2 if cout > in_shape[0] else 1))
        else:  # activations, pooling, normalisation sized by the layer's own output
            fresh = copy.deepcopy(module)
            for sub in fresh.modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
            modules.append(fresh)
    return nn.Sequential(*modules)


def _mlp(width: int, num_classes: int) -> list[nn.Module]:
    """Two hidden layers of `width` (LayerNorm, ReLU) and a linear classifier."""
    return [
        nn.Linear(width, width),
        nn.LayerNorm(width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.LayerNorm(width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    ]


def dgl_head(shape: Shape, num_classes: int) -> nn.Sequential:
    """DGL's classifier (Belilovsky et al. 2020): pool to ceil(size / 4), three 1x1 conv-norm-ReLU
    layers of the input's width, pool to at most 2 per side, then a 2-hidden-layer MLP.
    Vector features (an MLP's) go straight to the MLP."""
    if len(shape) == 1:
        return nn.Sequential(*_mlp(shape[0], num_classes))
    conv, pool = (nn.Conv1d, nn.AdaptiveAvgPool1d) if len(shape) == 2 else (nn.Conv2d, nn.AdaptiveAvgPool2d)
    channels, size = shape[0], tuple(math.ceil(s / 4) for s in shape[1:])
    layers: list[nn.Module] = [pool(size)]
    for _ in range(3):
        layers += [conv(channels, channels, 1), group_norm(channels), nn.ReLU()]
    small = tuple(min(2, s) for s in size)
    layers += [pool(small), nn.Flatten(), *_mlp(channels * math.prod(small), num_classes)]
    return nn.Sequential(*layers)


def linear_head(shape: Shape, num_classes: int) -> nn.Sequential:
    """Global average pooling (feature maps only) and a linear classifier: AugLocal's head."""
    if len(shape) == 1:
        return nn.Sequential(nn.Linear(shape[0], num_classes))
    pool = nn.AdaptiveAvgPool1d(1) if len(shape) == 2 else nn.AdaptiveAvgPool2d(1)
    return nn.Sequential(pool, nn.Flatten(), nn.Linear(shape[0], num_classes))


def auglocal_layers(last: int, num_layers: int, depth: int) -> list[int]:
    """Indices of the later layers AugLocal's auxiliary net copies for a block ending at layer
    `last` (0-based) of `num_layers`: j_i = round(last + (L - 1 - last) i / d), i = 1..d (Python's
    round half to even, as the reference code), or all later layers when d >= L - 1 - last.
    The last index is always L - 1."""
    remaining = num_layers - 1 - last
    if depth >= remaining:
        return list(range(last + 1, num_layers))
    return [round(last + remaining * i / depth) for i in range(1, depth + 1)]


def pyramid_depths(depth: int, coeff: float, num_aux: int) -> list[int]:
    """AugLocal's pyramidal depths of `num_aux` auxiliary nets:
    d_k = max(1, round(d (1 - c k / (n - 1)) + c k / (n - 1))), k = 0..n-1, falling from d to
    d - c (d - 1). The reference writes n - 1 as K - 2 for K modules."""
    if num_aux <= 1:
        return [depth] * num_aux
    ratios = [coeff * k / (num_aux - 1) for k in range(num_aux)]
    return [max(1, round(depth * (1 - r) + r)) for r in ratios]


class ClassifierLoss(nn.Module):
    """Cross-entropy of a classifier on the block output (DGL and AugLocal)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.net(h), y)


def auglocal_net(
    layers: list[nn.Sequential], shapes: list[Shape], last: int, depth: int, num_classes: int
) -> ClassifierLoss:
    """AugLocal (Ma et al. 2024): fresh copies of uniformly sampled later layers, then a linear
    head. `layers[j]` is layer j of the network and `shapes[j]` its output shape."""
    modules, shape = [], shapes[last]
    for j in auglocal_layers(last, len(layers), depth):
        layer = fresh_layer(layers[j], shape)
        shape = output_shape(layer, shape)
        modules.append(layer)
    return ClassifierLoss(nn.Sequential(*modules, linear_head(shape, num_classes)))


def reconstruction_decoder(shape: Shape, input_shape: Shape) -> nn.Sequential:
    """InfoPro's decoder from features to the flattened input: for feature maps of the input's kind,
    resize to the input's size, conv3x3 to 12 channels, norm, ReLU, conv3x3 to the input's channels;
    otherwise one linear map."""
    if len(shape) == len(input_shape) and len(shape) in (2, 3):
        conv, mode = (nn.Conv1d, "linear") if len(shape) == 2 else (nn.Conv2d, "bilinear")
        return nn.Sequential(
            nn.Upsample(size=tuple(input_shape[1:]), mode=mode, align_corners=False),
            conv(shape[0], 12, 3, padding=1),
            group_norm(12),
            nn.ReLU(),
            conv(12, input_shape[0], 3, padding=1),
            nn.Flatten(),
        )
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), math.prod(input_shape)))


class ManAux(nn.Module):
    """MAN (Su et al. 2024) on InfoPro's loss: z = bias(h) + ema(h), where `ema` is an EMA copy of
    the next block's first layer (kept by the client, never trained by gradient; the local
    gradient flows through it into h) and `bias` a trainable layer of the same shape (the
    "learnable bias"). Loss = recon_weight * MSE(decoder(z), x) + ce_weight * CE(head(z), y);
    a part whose weight is 0 is not built."""

    def __init__(
        self,
        next_layer: nn.Sequential,
        in_shape: Shape,
        input_shape: Shape,
        num_classes: int,
        recon_weight: float,
        ce_weight: float,
    ) -> None:
        super().__init__()
        self.bias = fresh_layer(next_layer, in_shape)
        self.ema = copy.deepcopy(next_layer).requires_grad_(False)  # initialised from the real layer
        shape = output_shape(self.bias, in_shape)
        self.recon_weight, self.ce_weight = recon_weight, ce_weight
        self.decoder = reconstruction_decoder(shape, input_shape) if recon_weight > 0 else None
        self.head = dgl_head(shape, num_classes) if ce_weight > 0 else None

    def forward(self, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.bias(h) + self.ema(h)
        loss = z.new_zeros(())
        if self.decoder is not None:
            loss = loss + self.recon_weight * F.mse_loss(self.decoder(z), x.flatten(1))
        if self.head is not None:
            loss = loss + self.ce_weight * F.cross_entropy(self.head(z), y)
        return loss


def man_weight(first_last: list[float], index: int, num_aux: int) -> float:
    """A MAN loss weight of auxiliary net `index` of `num_aux`, linear from `first_last[0]` to
    `first_last[1]` in r = index / (num_aux - 1), the module index i / (K - 2). (The reference
    interpolates in the stage index, stage / (K - 2), which reaches r >= 1 at K = 3 or 4 and makes
    weights zero or negative.)"""
    r = index / (num_aux - 1) if num_aux > 1 else 0.0
    return first_last[0] * (1 - r) + first_last[1] * r
