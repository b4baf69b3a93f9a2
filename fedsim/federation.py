"""A federation built from a config: its clients (a `fedsim.population.Population`), model,
strategy and trainer, and the backend `Task` they make. The engine and every process that trains clients on
its own (a Flower ClientApp) build it the same way, so the same config and seed give the same
clients, data and initial model everywhere."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from fedsim import tree
from fedsim.attacks import choose_attackers, upload_attack
from fedsim.backends.base import Task
from fedsim.config import Config
from fedsim.data import load_dataset, partition_dataset
from fedsim.data.holdout import split_validation
from fedsim.errors import ConfigError
from fedsim.models import build_model
from fedsim.normalisation import batch_norms, untrack_statistics
from fedsim.plugins import build_strategy, build_trainer, make
from fedsim.population import GeneratedPopulation, Holdouts, IndexedPopulation, Population
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
    population: Population  # the clients, materialised on demand, and the central test/validation sets
    model: nn.Module  # the network clients train, on the run's device
    params: Params  # the initial global params (what the trainer shares)
    statistics: Params  # the initial BatchNorm running statistics ({} without BatchNorm), fedsim.normalisation
    task: Task


def build_trainer_for(config: Config) -> ClientTrainer:
    """The `[trainer]` table's trainer, stepping with the `[train]` SGD settings."""
    trainer = build_trainer(config.trainer)
    t = config.train
    trainer.sgd = SGDSettings(weight_decay=t.weight_decay, momentum=t.momentum, clip_norm=t.clip_norm)
    return trainer


def build_population(config: Config) -> Population:
    """The clients `config` describes: a fixed dataset's partition, or a generated population.

    O(dataset) for a fixed dataset (loaded, split, partitioned once); O(N) sizes and the central
    test clients' data for a generated one."""
    d = config.data
    plugin = make("dataset", d.dataset)
    if plugin.generates_clients:
        _check_generated(d)
        return GeneratedPopulation(plugin, d, config.seed, holdouts(config, d.num_clients))
    data = dataclasses.asdict(d)  # every [data] key, for the dataset and the partitioner to read
    dataset = load_dataset(data.pop("dataset"), seed=config.seed, **data)
    dataset, validation = split_validation(dataset, d.validation_fraction, config.seed)
    partition = partition_dataset(
        dataset.train, data.pop("partitioner"), num_clients=data.pop("num_clients"), seed=config.seed, **data
    )
    if any(len(idx) == 0 for idx in partition.indices):
        raise ConfigError("the partition left a client without data; lower data.num_clients")
    if dataset.label_shape and d.label_ratio < 1:
        raise ConfigError(
            f"data.label_ratio < 1 hides whole samples' labels for pseudo-labelling, which needs one class per "
            f"sample; dataset '{d.dataset}' has a target per position: set data.label_ratio=1"
        )
    return IndexedPopulation(dataset, partition, holdouts(config, len(partition.indices)), validation)


def holdouts(config: Config, num_clients: int) -> Holdouts:
    """How each of `num_clients` clients' data is split, and who attacks (by flipping labels or not)."""
    d = config.data
    attackers = choose_attackers(config.attack, num_clients, config.seed)
    return Holdouts(config.seed, d.client_test_fraction, d.label_ratio, attackers, config.attack.name == "label_flip")


def _check_generated(d) -> None:
    """What a generated population cannot take, in one line each."""
    if d.partitioner != "natural":
        raise ConfigError(
            f"dataset '{d.dataset}' generates its clients (one per generator): set data.partitioner='natural', "
            f"not '{d.partitioner}'"
        )
    if d.num_clients == 0:
        raise ConfigError(f"dataset '{d.dataset}' generates as many clients as asked: set data.num_clients >= 1")
    if d.validation_fraction > 0:
        raise ConfigError(
            f"dataset '{d.dataset}' generates its clients and has no train pool to hold a validation split out "
            "of: set data.validation_fraction=0 (data.client_test_fraction holds out each client's share)"
        )


def build_federation(config: Config) -> Federation:
    """Load, split and build what `config` describes (validated beforehand)."""
    strategy, trainer = build_strategy(config.strategy), build_trainer_for(config)
    device = resolve_device(config.engine.device)
    population = build_population(config)
    backbone = build_model(
        config.model, population.input_shape, population.num_classes, config.seed, population.vocab_size
    )
    model = trainer.build_model(backbone, population.input_shape, population.num_classes, config.seed).to(device)
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
        population,
        LocalSchedule(epochs=t.local_epochs, steps=t.local_steps, batch_size=t.batch_size),
        device,
        track_memory=config.engine.track_memory,
        attack=upload_attack(config.attack, population.holdouts.attackers, config.seed),
    )
    return Federation(strategy, trainer, population, model, params, statistics, task)
