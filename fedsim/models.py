"""Models: the networks clients train, and the model interface a plugin implements.

A model is a dataclass subclass of `Model` whose fields are its hyperparameters (the `[model]`
table of a config, next to `name`), with `build(input_shape, num_classes) -> nn.Module`.
Register it in the `fedsim.models` entry-point group, or name it as `model.name =
"package.module:Class"` / `"path/to/file.py:Class"`; the built-ins below register the same way.
`build_model` seeds torch's generator around `build`, so the same seed gives the same weights.

Besides fedsim's own (mlp, cnn, GroupNorm ResNets) these are the models of the standard FL
benchmarks: LEAF's FEMNIST CNN, the FedAvg paper's CIFAR CNN and Shakespeare LSTM, and a
bag-of-embeddings text classifier for Sent140. Token models (`TokenModel`) take int64 token ids.

Built-in models normalise with GroupNorm, so a model's state is exactly its parameters; the
CNN's `norm = "batch"` adds BatchNorm, whose running statistics a trainer keeps per client
(FedBN, `fedsim.normalisation`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fedsim.config import option
from fedsim.errors import ConfigError
from fedsim.plugins import build_named


@dataclass
class Model:
    """The model interface: fields are hyperparameters; `build` makes the network.

    `inputs` says what the network takes: "features" (float tensors of `input_shape`) or
    "tokens" (int64 ids in [0, vocab_size), shape [B, L]). A model with a `vocab_size` field
    left at 0 gets the dataset's vocabulary size from `build_model`. `vectorizes = False` says
    the network does not run under `torch.func.vmap`, so the vectorized backend (and Ray workers
    training vectorized) refuse it.
    """

    name: ClassVar[str] = "model"
    inputs: ClassVar[str] = "features"
    vectorizes: ClassVar[bool] = True

    def validate(self) -> None:
        """Raise `ConfigError` for combinations of fields that make no sense (ranges: `option`)."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        raise NotImplementedError


@dataclass
class MLP(Model):
    """Multi-layer perceptron on flattened inputs (model.hidden sets the widths)."""

    name: ClassVar[str] = "mlp"

    hidden: list[int] = option([128], gt=0)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)


@dataclass
class CNN(Model):
    """Small CNN, 1-D for sequences (C, L) and 2-D for images (C, H, W) (model.channels).

    Conv-(BatchNorm)-ReLU-(pool) stacks, then global average pooling and a linear head;
    `norm = "batch"` puts a BatchNorm after each convolution (the network of FedBN).
    """

    name: ClassVar[str] = "cnn"

    channels: list[int] = option([32, 64], gt=0)
    norm: str = option("none", choices=("none", "batch"))

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) not in (2, 3):
            raise ConfigError(
                f"model 'cnn' needs inputs shaped (C, L) or (C, H, W), got {input_shape}; use model.name=mlp"
            )
        conv, norm, pool, gap = (
            (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d)
            if len(input_shape) == 2
            else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
        )
        layers: list[nn.Module] = []
        width, size = input_shape[0], min(input_shape[1:])
        for out in self.channels:
            layers += [conv(width, out, kernel_size=3, padding=1), *([norm(out)] if self.norm == "batch" else []), nn.ReLU()]
            if size >= 4:
                layers.append(pool(2))
                size //= 2
            width = out
        layers += [gap(1), nn.Flatten(), nn.Linear(width, num_classes)]
        return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a residual connection (1x1 conv when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(2, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(2, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(2, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def require_image(input_shape: tuple[int, ...], name: str) -> None:
    if len(input_shape) != 3:
        raise ConfigError(f"model '{name}' needs image inputs (C, H, W), got {input_shape}")


def resnet_gn(
    input_shape: tuple[int, ...], num_classes: int, stages: list[tuple[int, int, int]], name: str
) -> nn.Module:
    """A GroupNorm ResNet: a 3x3 stem as wide as the first stage, then `stages` of
    (width, basic blocks, stride of the first block), global pooling and a linear head."""
    require_image(input_shape, name)
    cin = stages[0][0]
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], cin, 3, 1, 1, bias=False),
        nn.GroupNorm(2, cin),
        nn.ReLU(),
    ]
    for cout, blocks, stride in stages:
        for i in range(blocks):
            layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


@dataclass
class ResNet18GN(Model):
    """CIFAR ResNet-18 with GroupNorm(2), as in FL-Simulator (images only).

    Four stages of two basic blocks, widths 64/128/256/512, for 32x32-style images.
    """

    name: ClassVar[str] = "resnet18_gn"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        stages = [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]
        return resnet_gn(input_shape, num_classes, stages, self.name)


@dataclass
class ResNet32GN(Model):
    """CIFAR ResNet-32 (He et al.): 3 stages of 5 basic blocks, widths 16/32/64, GroupNorm.

    The CIFAR ResNet-(6n+2) of He et al. (2016): three stages of n basic blocks with widths 16,
    32, 64 (stride 2 into stages 2 and 3); GroupNorm and 1x1-conv shortcuts.
    """

    name: ClassVar[str] = "resnet32_gn"
    blocks_per_stage: ClassVar[int] = 5

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        n = self.blocks_per_stage
        return resnet_gn(input_shape, num_classes, [(16, n, 1), (32, n, 2), (64, n, 2)], self.name)


@dataclass
class ResNet110GN(ResNet32GN):
    """CIFAR ResNet-110 (He et al.): 3 stages of 18 basic blocks, widths 16/32/64, GroupNorm."""

    name: ClassVar[str] = "resnet110_gn"
    blocks_per_stage: ClassVar[int] = 18


@dataclass
class FemnistCNN(Model):
    """LEAF's FEMNIST CNN (Caldas et al., 2018): two 5x5 conv + max-pool stages, FC 2048, linear head.

    Convolutions of 32 and 64 channels (padding 2), each ReLU + 2x2 max-pool; 6,603,710
    parameters for 1x28x28 inputs and 62 classes.
    """

    name: ClassVar[str] = "femnist_cnn"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        require_image(input_shape, self.name)
        c, h, w = input_shape
        if h < 4 or w < 4:
            raise ConfigError(
                f"model '{self.name}' pools twice by 2: it needs images of 4x4 or more, got {input_shape}"
            )
        return nn.Sequential(
            nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 2048), nn.ReLU(),
            nn.Linear(2048, num_classes),
        )


@dataclass
class CifarCNN(Model):
    """The FedAvg paper's CIFAR CNN (McMahan et al., 2017): two 5x5 convs of 64, FC 384, FC 192, head.

    The paper's "TensorFlow tutorial model": two 5x5 conv layers of 64 channels, each ReLU +
    3x3 max-pool of stride 2 (padding 1), then FC 384 + ReLU, FC 192 + ReLU and a linear head.
    The tutorial's local response normalisation is left out.
    """

    name: ClassVar[str] = "cifar_cnn"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        require_image(input_shape, self.name)
        c, h, w = input_shape
        for _ in range(2):  # a 3x3 pool of stride 2 and padding 1 maps n to ceil(n / 2)
            h, w = (h + 1) // 2, (w + 1) // 2
        return nn.Sequential(
            nn.Conv2d(c, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
            nn.Flatten(),
            nn.Linear(64 * h * w, 384), nn.ReLU(),
            nn.Linear(384, 192), nn.ReLU(),
            nn.Linear(192, num_classes),
        )


@dataclass
class TokenModel(Model):
    """A model of int64 token ids (shape [B, L]); `vocab_size = 0` takes the dataset's vocabulary."""

    inputs: ClassVar[str] = "tokens"

    vocab_size: int = option(0, ge=0)


class NextTokenLSTM(nn.Module):
    """Embedding, stacked LSTM, linear head: logits at every position, or at the last only."""

    def __init__(
        self, vocab_size: int, embedding: int, hidden: int, layers: int, num_classes: int, last: bool
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding)
        self.lstm = nn.LSTM(embedding, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)
        self.last = last

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out[:, -1] if self.last else out)


@dataclass
class LSTM(TokenModel):
    """Shakespeare LSTM (FedAvg, McMahan et al., 2017; LEAF, Caldas et al., 2018): 2 layers of 256.

    An embedding of `embedding` = 8, `layers` = 2 LSTM layers of `hidden` = 256, a linear head.
    `predict = "each"`: logits at every position, [B, L, num_classes] (the next-character model);
    `"last"`: logits of the final position, [B, num_classes] (a sequence classifier; inputs are
    left-padded with id 0, so the last position holds the last real token). nn.LSTM has no vmap
    batching rule ("Batching rule not implemented for aten::lstm.input"), so `vectorizes = False`:
    the vectorized backend cannot train it.
    """

    name: ClassVar[str] = "lstm"
    vectorizes: ClassVar[bool] = False

    embedding: int = option(8, ge=1)
    hidden: int = option(256, ge=1)
    layers: int = option(2, ge=1)
    predict: str = option("each", choices=("each", "last"))

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return NextTokenLSTM(
            self.vocab_size, self.embedding, self.hidden, self.layers, num_classes, self.predict == "last"
        )


class MeanEmbedding(nn.Module):
    """Token embeddings averaged over the positions that are not padding (id 0), then an MLP."""

    def __init__(self, vocab_size: int, embedding: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding)
        self.hidden = nn.Linear(embedding, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(-1).to(self.embed.weight.dtype)
        # all padding: a zero sum over a count clamped to 1, the zero vector
        mean = (self.embed(tokens) * mask).sum(-2) / mask.sum(-2).clamp(min=1)
        return self.head(torch.relu(self.hidden(mean)))


@dataclass
class Text(TokenModel):
    """Bag-of-embeddings text classifier: masked mean of token embeddings, one hidden layer.

    A vmap-friendly alternative to the LSTM for Sent140 (LEAF, Caldas et al., 2018), in the
    spirit of fastText (Joulin et al., 2017): padding (id 0) is left out of the mean, and a
    sequence of only padding averages to the zero vector.
    """

    name: ClassVar[str] = "text"

    embedding: int = option(64, ge=1)
    hidden: int = option(64, ge=1)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return MeanEmbedding(self.vocab_size, self.embedding, self.hidden, num_classes)


def build_model(
    table: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, seed: int, vocab_size: int = 0
) -> nn.Module:
    """Build the model a `[model]` table names for the given input shape, initialised from `seed`.

    `vocab_size` is the dataset's vocabulary (0: it has none); it fills a model's `vocab_size`
    field that the config leaves at 0.
    """
    model = build_named("model", table)
    if (model.inputs == "tokens") != (vocab_size > 0):
        given, wanted = ("token ids", "features") if vocab_size else ("features", "token ids")
        raise ConfigError(
            f"model '{model.name}' takes {wanted}, but the dataset gives {given}: use a model for "
            + ("token ids (lstm, text)" if vocab_size else "features (mlp, cnn, ...)")
        )
    if "vocab_size" in {f.name for f in dataclasses.fields(model)} and model.vocab_size == 0:
        model = dataclasses.replace(model, vocab_size=vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model.build(tuple(input_shape), num_classes)
