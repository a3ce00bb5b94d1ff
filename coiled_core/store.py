"""The store: what a backend's world does not hold, at an fsspec URL.

Named configurations, software environment specs and per-cluster TLS material live here. The
location is dask config ``coiled.store`` (any fsspec URL; default a per-user directory), so a
team shares them by pointing everyone at one bucket. Keys are ``/``-separated paths under a
layout version, so that a later layout can live beside this one.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Iterator

from coiled_core import config

#: Version of the store's layout; everything lives under ``v<LAYOUT_VERSION>/``.
LAYOUT_VERSION = 1


def default_store_url() -> str:
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "coiled", "store")


class Store:
    """Bytes by key at an fsspec URL. Keys look like ``clusters/<backend>/<name>/tls/ca.pem``."""

    def __init__(self, url: str | None = None):
        import fsspec

        self.url = url or config.get("store") or default_store_url()
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.root = posixpath.join(root.rstrip("/") or "/", f"v{LAYOUT_VERSION}")
        self._is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def _path(self, key: str) -> str:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise ValueError(f"invalid store key {key!r}")
        return posixpath.join(self.root, *parts)

    def write(self, key: str, data: bytes, private: bool = False) -> None:
        """Write ``data`` at ``key``, atomically: readers see the old bytes or the new, never part.

        ``private`` (for keys and certificates) makes a local file readable by its owner only
        from the moment it exists, in a directory only its owner can enter. Object stores have
        no such modes: who may read a shared store is the bucket's policy (see the README).
        """
        path = self._path(key)
        if self._is_local:
            _write_local_file(path, data, private)
            return
        # A temporary name unique to this call: two threads of one process may write one key.
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, path)

    def read(self, key: str) -> bytes | None:
        """The bytes at ``key``, or None if there are none."""
        try:
            with self.fs.open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def delete(self, key: str) -> None:
        """Delete ``key`` and everything under it; missing keys are fine."""
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def remove_empty_folder(self, key: str) -> None:
        """Remove the folder ``key`` if it is empty (never its contents). Object stores have no
        folders, so there is nothing to do there."""
        if self._is_local:
            try:
                os.rmdir(self._path(key))
            except OSError:
                pass  # not empty, or gone already

    def list(self, prefix: str) -> Iterator[str]:
        """Names directly under ``prefix``."""
        path = self._path(prefix)
        if not self.fs.exists(path):
            return iter(())
        return iter(sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False)))

    def local_path(self, key: str) -> str | None:
        """A file-system path for ``key`` when the store is local (for TLS files), else None."""
        return self._path(key) if self._is_local else None


def make_private_dirs(directory: str) -> None:
    """Create ``directory`` and its missing parents, each enterable by this user only."""
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass


def _write_local_file(path: str, data: bytes, private: bool) -> None:
    """Write a file of the local store through a unique temporary name, synced, then renamed."""
    directory = os.path.dirname(path)
    make_private_dirs(directory)
    if private:
        # The directory holding a key is this user's alone, whatever made it before.
        os.chmod(directory, 0o700)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    # Created with its final mode: never readable by others, not even for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # The rename itself is durable only once the directory is synced.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

