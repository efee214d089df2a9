"""Checkpoints: a solver's ``state_dict()`` to one ``.npz`` file, written atomically.

Nested dicts are flattened with ``/`` in the keys; strings are stored as 0-d unicode arrays.
The file is written to ``<path>.tmp``, flushed to disk, renamed, and the folder is flushed too
(so the rename itself survives a power cut): an interrupted write (even SIGKILL) leaves the
previous checkpoint intact.

:class:`RunLock` keeps a second process out of a run folder while one is using it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunLock", "load_checkpoint", "save_checkpoint"]


def _flatten(state: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if "/" in key:
            raise ValueError(f"checkpoint keys may not contain '/': {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
            if not value:
                out[name + "/"] = np.zeros(0)
        else:
            out[name] = np.asarray(value)
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flat.items():
        parts = name.split("/")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if parts[-1]:
            node[parts[-1]] = value.item() if value.dtype.kind == "U" else value
    return out


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (nested dicts of arrays / scalars / strings) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **_flatten(state))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RunLock:
    """An exclusive lock on a run folder (``<folder>/.cryonb.lock``), held while a run works.

    ``with RunLock(folder): ...``; a second process that tries while the first holds it gets a
    :class:`cryonb.io.errors.CryonbInputError`.  The lock is the operating system's
    (``fcntl.flock``): it goes away with the process that held it, even after SIGKILL, so a
    killed run can be resumed at once.  Where ``fcntl`` does not exist (Windows) it does
    nothing.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / ".cryonb.lock"
        self._fh: Any = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX
            return self
        from .io.errors import input_error

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise input_error(self.path.parent, f"another cryonb run ({holder}) is using this "
                              "folder", "wait for it to finish, or use another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock
            self._fh = None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    with np.load(path, allow_pickle=False) as data:
        return _unflatten({name: data[name] for name in data.files})
