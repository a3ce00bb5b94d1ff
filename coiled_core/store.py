"""The store: what a backend's world does not hold, at an fsspec URL.

Named configurations, software environment specs and per-cluster TLS material live here. The
location is dask config ``coiled.store`` (any fsspec URL; default a per-user directory), so a
team shares them by pointing everyone at one bucket. Keys are ``/``-separated paths under a
layout version, so that a later layout can live beside this one.
"""

from __future__ import annotations

import os
import posixpath
from typing import Iterator

from coiled_core import config

#: Version of the store's layout; everything lives under ``v<LAYOUT_VERSION>/``.
LAYOUT_VERSION = 1


def default_store_url() -> str:
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "coiled", "store")


class Store:
    """Bytes by key at an fsspec URL. Keys look like ``clusters/<name>/tls/ca.pem``."""

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
        """Write ``data`` at ``key``; ``private`` makes a local file readable by its owner only."""
        path = self._path(key)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        if private and self._is_local:
            os.chmod(tmp, 0o600)
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

    def list(self, prefix: str) -> Iterator[str]:
        """Names directly under ``prefix``."""
        path = self._path(prefix)
        if not self.fs.exists(path):
            return iter(())
        return iter(sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False)))

    def local_path(self, key: str) -> str | None:
        """A file-system path for ``key`` when the store is local (for TLS files), else None."""
        return self._path(key) if self._is_local else None
