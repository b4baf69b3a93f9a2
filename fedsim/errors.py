"""Errors a user can cause and fix. The CLI turns each into one line on stderr."""

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


_FEDSIM_DIR = Path(__file__).parent
# the interfaces a plugin implements, by class name, and what the message calls them
_PLUGIN_KINDS = {
    "Strategy": "strategy", "ClientTrainer": "trainer", "Model": "model",
    "Dataset": "dataset", "Partitioner": "partitioner",
}


class PluginFailed(FedsimError):
    """A plugin's code raised while a run used it: names the plugin, its hook, the round and the
    client(s); `details` keeps the traceback (the CLI writes it to RUN/error.txt)."""

    exit_code = 1

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details

    def __reduce__(self):
        return type(self), (str(self), self.details)

    @classmethod
    def of(cls, error: Exception, round_: int, clients: list[int] | None = None) -> "PluginFailed":
        """Describe `error`, raised in `round_` (training `clients`, if on a client), in one line."""
        where = f"round {round_}" + (f", {_clients(clients)}" if clients else "")
        hook = _plugin_hook(error)
        what = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        message = f"{hook} raised {what} ({where})" if hook else f"round failed: {what} ({where})"
        return cls(message, "".join(traceback.format_exception(error)))


@contextmanager
def plugin_code(round_: int, clients: list[int] | None = None) -> Iterator[None]:
    """Around calls into plugins: an exception that is not a `FedsimError` becomes `PluginFailed`."""
    try:
        yield
    except FedsimError:
        raise
    except Exception as err:
        raise PluginFailed.of(err, round_, clients) from err


def _clients(ids: list[int]) -> str:
    if len(ids) == 1:
        return f"client {ids[0]}"
    return f"one of clients {', '.join(map(str, ids[:5]))}" + (", ..." if len(ids) > 5 else "")


def _plugin_hook(error: BaseException) -> str | None:
    """`strategy 'fedx' in server_update`: the hook fedsim called, i.e. the outermost frame of
    the traceback that is a method of a plugin (its `self` implements a plugin interface),
    preferring the plugin's own code to the defaults it inherits from fedsim."""
    hooks = []
    for frame, _ in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        kind = next((_PLUGIN_KINDS[c.__name__] for c in type(owner).__mro__ if c.__name__ in _PLUGIN_KINDS), None)
        if kind is not None:
            own_code = not Path(frame.f_code.co_filename).is_relative_to(_FEDSIM_DIR)
            hooks.append((own_code, f"{kind} '{getattr(owner, 'name', type(owner).__name__)}' in {frame.f_code.co_name}"))
    return next((hook for own, hook in hooks if own), hooks[0][1] if hooks else None)
