"""Engine-owned store of per-client state (SCAFFOLD's c_i, FedSpeed's correction, personal models...).

Only clients that have participated have a state. The most recently used states are held in
RAM, up to `memory_bytes` (0 = no bound); beyond it the least recently used are written to disk
and dropped from RAM. On disk the states are segments: one safetensors file per write (the
states a round evicts, or those changed since the last checkpoint), `seg_NNNNNNNN.safetensors`,
found through an index client id -> segment held in RAM. A segment stacks its clients' states,
one row per client: `<k>/clients` (their ids) and `<k>/<group>/<name>` for each layout k of
names, shapes and dtypes (one, unless states differ between clients). Many clients share a file,
and a few large tensors, because one small file (or tensor) per client is several times slower
to write and read back (benchmarks/client_state.py measures it).

A segment file is never changed once written, so a checkpoint can reference it: `flush()` writes
the states changed since the last write, fsyncs the segments written since the last flush, and
returns the index; the checkpoint saves the index, and `checkpointed(index)` tells the store
which segments to keep until the next checkpoint. A segment
whose clients all have newer states is deleted unless the newest checkpoint needs it. When the
files hold more than twice as many states as are live, each write also carries over (as many as
it writes) survivors of the sparsest segments, so the files stay within about twice the live states.

Files live in `directory` (a run folder's `client_states/`) or, without one, in a temporary
directory made on the first write. When the store is dropped, or the process exits, it deletes
its files that no checkpoint references, and the directory once it is empty.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fedsim.errors import ConfigError
from fedsim.strategy import State

_SEP = "/"
_SEGMENT = "seg_{:08d}.safetensors"


def flatten(state: State) -> dict[str, torch.Tensor]:
    return {f"{group}{_SEP}{name}": t for group, params in state.items() for name, t in params.items()}


def unflatten(flat: dict[str, torch.Tensor]) -> State:
    state: State = {}
    for key, t in flat.items():
        group, name = key.split(_SEP, 1)
        state.setdefault(group, {})[name] = t
    return state


def state_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for params in state.values() for t in params.values())


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it: a checkpoint's files must outlive the machine, not only the process."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_path(path: Path) -> None:
    """fsync a file already written, or a directory (so the names in it are durable too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _owned(t: torch.Tensor) -> torch.Tensor:
    """`t` on the CPU, copied if it is a view into a larger tensor (a vmapped chunk's), which it
    would otherwise keep alive beyond what the budget counts."""
    t = t.detach().cpu()
    return t if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def _pack(states: dict[int, State]) -> dict[str, torch.Tensor]:
    """A segment's tensors: the states of each layout stacked, one row per client."""
    flat = {cid: flatten(state) for cid, state in states.items()}
    layouts: dict[tuple, list[int]] = {}
    for cid, tensors in flat.items():
        layouts.setdefault(tuple((k, t.shape, t.dtype) for k, t in tensors.items()), []).append(cid)
    packed = {}
    for k, cids in enumerate(layouts.values()):
        packed[f"{k}{_SEP}clients"] = torch.tensor(cids, dtype=torch.int64)
        for key in flat[cids[0]]:
            packed[f"{k}{_SEP}{key}"] = torch.stack([flat[cid][key] for cid in cids])
    return packed


def _segment_number(path: Path) -> int | None:
    match = re.fullmatch(r"seg_(\d+)\.safetensors", path.name)
    return int(match[1]) if match else None


def _delete_unreferenced(directory: Path, files: dict[int, int], pinned: set[int]) -> None:
    """The store's finalizer: it gets the store's own (mutable) tables, never the store."""
    for segment in files:
        if segment not in pinned:
            (directory / _SEGMENT.format(segment)).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()  # only once it is empty


def require_writable(directory: Path) -> None:
    """Make `directory` and write a probe file in it, or raise a one-line ConfigError saying why
    not: a store must be able to spill before the first round trains, not fail in the middle."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise ConfigError(
            f"client-state directory {directory} is not writable ({err.strerror or type(err).__name__}); "
            "use a writable --out"
        ) from None


class ClientStateStore:
    """Mapping client id -> State: the recently used in RAM within a byte budget, the rest in segment files."""

    def __init__(self, memory_bytes: int = 0, directory: str | Path | None = None) -> None:
        self.memory_bytes = memory_bytes
        self.directory = Path(directory) if directory else None
        if self.directory is not None:
            require_writable(self.directory)
        self.resident_bytes = 0  # bytes of the states held in RAM
        self._memory: OrderedDict[int, State] = OrderedDict()  # least recently used first
        self._sizes: dict[int, int] = {}  # client id -> bytes of its state in RAM
        self._dirty: set[int] = set()  # states in RAM that no segment holds
        self._index: dict[int, int] = {}  # client id -> the segment holding its newest state
        self._members: dict[int, set[int]] = {}  # segment -> clients whose newest state it holds
        self._files: dict[int, int] = {}  # segment -> states it holds, live or not, for each file this store keeps
        self._pinned: set[int] = set()  # segments the newest checkpoint references
        self._unsynced: set[int] = set()  # segments written since the last flush, not fsynced yet
        self._next: int | None = None  # the next segment's number, once the directory is open

    # ------------------------------------------------------------------ reading
    def get(self, client_id: int) -> State | None:
        return self.get_many([client_id]).get(client_id)

    def get_many(self, client_ids: Iterable[int]) -> dict[int, State]:
        """The states of those of `client_ids` that have one; each segment is opened once."""
        found: dict[int, State] = {}
        on_disk: dict[int, set[int]] = {}
        for cid in client_ids:
            if cid in self._memory:
                self._memory.move_to_end(cid)
                found[cid] = self._memory[cid]
            elif cid in self._index:
                on_disk.setdefault(self._index[cid], set()).add(cid)
        for segment, cids in on_disk.items():
            found.update(self._read(segment, cids))
        return found

    def client_ids(self) -> list[int]:
        return sorted(self._memory.keys() | self._index.keys())

    def __len__(self) -> int:
        return len(self._memory.keys() | self._index.keys())

    # ------------------------------------------------------------------ writing
    def set(self, client_id: int, state: State) -> None:
        self.update({client_id: state})

    def update(self, states: dict[int, State]) -> None:
        """Keep new states (a round's), then write the least recently used beyond the budget as one segment.

        A state on another device is copied to the CPU; the budget counts the bytes of its tensors.
        """
        for cid, state in states.items():
            if not state:
                continue  # stateless strategies store nothing
            self._forget(cid)
            own = {g: {k: _owned(t) for k, t in p.items()} for g, p in state.items()}
            self._memory[cid], self._sizes[cid] = own, state_bytes(own)
            self.resident_bytes += self._sizes[cid]
            self._dirty.add(cid)
        evicted = {}
        while self.memory_bytes and self.resident_bytes > self.memory_bytes:
            cid, state = self._memory.popitem(last=False)
            self.resident_bytes -= self._sizes.pop(cid)
            if cid in self._dirty:  # a clean one is on disk already
                self._dirty.discard(cid)
                evicted[cid] = state
        self._write(evicted)

    def flush(self) -> dict[int, int]:
        """Write the states in RAM that no segment holds, as one segment (they stay in RAM), and make
        every segment durable; returns the index, client id -> segment, that with the segment files
        holds every state. Segments are fsynced here rather than as they are written, since only a
        checkpoint needs them to outlive the machine."""
        self._write({cid: state for cid, state in self._memory.items() if cid in self._dirty})
        self._dirty.clear()
        for segment in self._unsynced & self._files.keys():
            fsync_path(self.directory / _SEGMENT.format(segment))
        if self._unsynced:
            fsync_path(self.directory)
        self._unsynced.clear()
        return dict(self._index)

    def checkpointed(self, index: dict[int, int]) -> None:
        """The newest checkpoint references `index` (from `flush`): keep its segments until the next
        one, and delete those only older checkpoints needed."""
        self._pinned.clear()
        self._pinned.update(index.values())
        for segment in [s for s in self._files if s not in self._members and s not in self._pinned]:
            self._delete(segment)

    def restore(self, index: dict[int, int]) -> None:
        """Continue from a checkpoint's `index` of the segment files in this store's directory; the
        files it does not reference (written after that checkpoint) are deleted on the first write."""
        self._memory.clear()
        self._sizes.clear()
        self._dirty.clear()
        self.resident_bytes = 0
        self._index = dict(index)
        self._members = {}
        for cid, segment in self._index.items():
            self._members.setdefault(segment, set()).add(cid)
        self._files.clear()
        for segment in self._members:
            with safe_open(self.directory / _SEGMENT.format(segment), "pt") as f:
                self._files[segment] = sum(f.get_slice(key).get_shape()[0] for key in f.keys() if key.count(_SEP) == 1)
        self._pinned.clear()
        self._pinned.update(self._members)
        self._unsynced.clear()
        self._next = None  # the next write opens the directory again, deleting what the index leaves out

    # ------------------------------------------------------------------ files
    def _open(self) -> Path:
        """The segment directory, made on first use. Segment files there that this store does not
        keep (another run's, or those written after the checkpoint it resumes) are deleted."""
        if self._next is None:
            if self.directory is None:
                self.directory = Path(tempfile.mkdtemp(prefix="fedsim-client-states-"))
            self.directory.mkdir(parents=True, exist_ok=True)
            found = {n for n in map(_segment_number, self.directory.iterdir()) if n is not None}
            for stale in found - self._files.keys():
                (self.directory / _SEGMENT.format(stale)).unlink(missing_ok=True)
            self._next = max(found, default=-1) + 1  # past every number a crashed writer may still hold
            weakref.finalize(self, _delete_unreferenced, self.directory, self._files, self._pinned)
        return self.directory

    def _read(self, segment: int, client_ids: set[int]) -> dict[int, State]:
        """States of `client_ids` from a segment, each row copied: a tensor safetensors maps from
        the file would keep the whole file mapped (and counted in the process's RSS) while it lives."""
        flat: dict[int, dict[str, torch.Tensor]] = {}
        with safe_open(self.directory / _SEGMENT.format(segment), "pt") as f:
            keys = list(f.keys())
            for ids_key in [key for key in keys if key.count(_SEP) == 1]:  # "<k>/clients"
                rows = {cid: row for row, cid in enumerate(f.get_tensor(ids_key).tolist()) if cid in client_ids}
                prefix = ids_key.split(_SEP)[0] + _SEP
                for key in keys if rows else ():
                    if key.startswith(prefix) and key != ids_key:
                        stacked = f.get_tensor(key)
                        for cid, row in rows.items():
                            flat.setdefault(cid, {})[key[len(prefix) :]] = stacked[row].clone()
        return {cid: unflatten(tensors) for cid, tensors in flat.items()}

    def _write(self, states: dict[int, State]) -> None:
        """Write `states`, and survivors of sparse segments, as one new segment and index them there."""
        if not states:
            return
        states = {**self._survivors(len(states)), **states}
        directory = self._open()
        segment, self._next = self._next, self._next + 1
        save_file(_pack(states), directory / _SEGMENT.format(segment))
        self._unsynced.add(segment)
        self._files[segment] = len(states)
        for cid in states:
            self._unindex(cid)
            self._index[cid] = segment
        self._members[segment] = set(states)

    def _survivors(self, count: int) -> dict[int, State]:
        """Up to `count` live states from the sparsest segments under half live, once the files
        hold more than twice as many states as are live; none otherwise."""
        if sum(self._files[s] for s in self._members) <= 2 * len(self._index):
            return {}
        found: dict[int, State] = {}
        for segment in sorted(self._members, key=lambda s: len(self._members[s]) / self._files[s]):
            left = count - len(found)
            if left == 0 or 2 * len(self._members[segment]) >= self._files[segment]:
                break
            found.update(self._read(segment, set(sorted(self._members[segment])[:left])))
        return found

    def _forget(self, client_id: int) -> None:
        """Drop a client's state from RAM and from the index (a new one replaces it)."""
        if client_id in self._memory:
            del self._memory[client_id]
            self.resident_bytes -= self._sizes.pop(client_id)
            self._dirty.discard(client_id)
        self._unindex(client_id)

    def _unindex(self, client_id: int) -> None:
        """Its segment no longer holds the client's newest state; a segment left with none is
        deleted unless the newest checkpoint references it."""
        segment = self._index.pop(client_id, None)
        if segment is None:
            return
        members = self._members[segment]
        members.discard(client_id)
        if not members:
            del self._members[segment]
            if segment not in self._pinned:
                self._delete(segment)

    def _delete(self, segment: int) -> None:
        (self.directory / _SEGMENT.format(segment)).unlink(missing_ok=True)
        del self._files[segment]
