"""A federation built from a config: dataset, partition, per-client data, model, strategy and
trainer, and the backend `Task` they make. The engine and every process that trains clients on
its own (a Flower ClientApp) build it the same way, so the same config and seed give the same
clients, data and initial model everywhere."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedsim import tree
from fedsim.attacks import choose_attackers, poison, upload_attack
from fedsim.backends.base import Task
from fedsim.config import Config
from fedsim.data import DatasetBundle, Partition, load_dataset, partition_dataset
from fedsim.data.holdout import split_client_test, split_validation
from fedsim.data.labels import split_labels
from fedsim.errors import ConfigError
from fedsim.loss import sample_labels
from fedsim.models import build_model
from fedsim.normalisation import batch_norms, untrack_statistics
from fedsim.plugins import build_strategy, build_trainer
from fedsim.schedule import LocalSchedule
from fedsim.strategy import Strategy
from fedsim.trainer import ClientTrainer, SGDSettings
from fedsim.tree import Params
from fedsim.validate import resolve_device


@dataclass
class Federation:
    """Everything a run is built from; `task` is what backends receive."""

    strategy: Strategy
    trainer: ClientTrainer
    dataset: DatasetBundle
    partition: Partition
    model: nn.Module  # the network clients train, on the run's device
    params: Params  # the initial global params (what the trainer shares)
    statistics: Params  # the initial BatchNorm running statistics ({} without BatchNorm), fedsim.normalisation
    task: Task
    train_labels: np.ndarray  # every training sample's class (`sample_labels`), for heterogeneity statistics
    hidden_labels: list[torch.Tensor]  # per client the true labels of its unlabelled samples
    validation: tuple[torch.Tensor, torch.Tensor] | None  # held out of the train pool (data.validation_fraction)
    client_test: list[tuple[torch.Tensor, torch.Tensor]]  # per client its local test share (may be empty)


def build_trainer_for(config: Config) -> ClientTrainer:
    """The `[trainer]` table's trainer, stepping with the `[train]` SGD settings."""
    trainer = build_trainer(config.trainer)
    t = config.train
    trainer.sgd = SGDSettings(weight_decay=t.weight_decay, momentum=t.momentum, clip_norm=t.clip_norm)
    return trainer


def build_federation(config: Config) -> Federation:
    """Load, split and build what `config` describes (validated beforehand)."""
    strategy, trainer = build_strategy(config.strategy), build_trainer_for(config)
    device = resolve_device(config.engine.device)
    d = config.data
    data = dataclasses.asdict(d)  # every [data] key, for the dataset and the partitioner to read
    dataset = load_dataset(data.pop("dataset"), seed=config.seed, **data)
    dataset, validation = split_validation(dataset, d.validation_fraction, config.seed)
    partition = partition_dataset(
        dataset.train, data.pop("partitioner"), num_clients=data.pop("num_clients"), seed=config.seed, **data
    )
    if any(len(idx) == 0 for idx in partition.indices):
        raise ConfigError("the partition left a client without data; lower data.num_clients")
    x_train, y_train = dataset.tensors("train")
    if y_train.ndim > 1 and d.label_ratio < 1:
        raise ConfigError(
            f"data.label_ratio < 1 hides whole samples' labels for pseudo-labelling, which needs one class per "
            f"sample; dataset '{d.dataset}' has a target per position: set data.label_ratio=1"
        )
    client_data = [(x_train[idx], y_train[idx]) for idx in map(torch.as_tensor, partition.indices)]
    client_data, client_test = split_client_test(client_data, d.client_test_fraction, config.seed)
    # backends get the labelled (x, y) and the unlabelled x; the unlabelled samples' true labels
    # stay with the engine, for the trainer's diagnostics (`ClientTrainer.round_metrics`)
    client_data, unlabelled_data, hidden_labels = split_labels(client_data, d.label_ratio, config.seed)
    attackers = choose_attackers(config.attack, len(client_data), config.seed)
    if config.attack.name == "label_flip":
        client_data = poison(client_data, attackers, dataset.num_classes)
    backbone = build_model(config.model, dataset.input_shape, dataset.num_classes, config.seed, dataset.vocab_size)
    model = trainer.build_model(backbone, dataset.input_shape, dataset.num_classes, config.seed).to(device)
    params = trainer.prepare(model, tree.clone(dict(model.named_parameters())))
    statistics = untrack_statistics(model)
    if statistics and not trainer.keeps_statistics:
        layers = ", ".join(f"'{name}'" for name in list(batch_norms(model))[:3])
        raise ConfigError(
            f"model '{config.model['name']}' has BatchNorm layers ({layers}), whose running statistics trainer "
            f"'{trainer.name}' does not keep; use trainer.name='fedbn' (statistics per client) or a model "
            "without BatchNorm (e.g. GroupNorm)"
        )
    t = config.train
    task = Task(
        config.seed,
        model,
        strategy,
        trainer,
        client_data,
        LocalSchedule(epochs=t.local_epochs, steps=t.local_steps, batch_size=t.batch_size),
        device,
        unlabelled_data,
        track_memory=config.engine.track_memory,
        attack=upload_attack(config.attack, attackers, config.seed),
    )
    return Federation(
        strategy, trainer, dataset, partition, model, params, statistics, task, sample_labels(y_train).numpy(), hidden_labels,
        validation, client_test,
    )
