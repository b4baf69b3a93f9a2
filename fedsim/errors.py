"""Errors a user can cause and fix. The CLI turns each into one line on stderr."""


class FedsimError(Exception):
    """Base class: anything the CLI reports as one line instead of a traceback."""

    exit_code = 1


class ConfigError(FedsimError):
    """The experiment config (or a value derived from it) is invalid. Raised before any work."""

    exit_code = 2


class DatasetUnavailable(FedsimError):
    """A dataset cannot be loaded (e.g. the hub is unreachable and no local copy was given)."""

    exit_code = 2


class TrainingDiverged(FedsimError):
    """A client's loss became NaN or infinite; names the round and the client."""

    exit_code = 3

    def __init__(self, round_: int, client_id: int, loss: float):
        super().__init__(
            f"training diverged: client {client_id} had loss {loss} in round {round_} "
            "(lower train.lr or set train.clip_norm)"
        )
        self.round = round_
        self.client_id = client_id
        self.loss = loss

    def __reduce__(self):
        # rebuild from the constructor's arguments, so the error crosses process boundaries (Ray)
        return type(self), (self.round, self.client_id, self.loss)
