"""The proof that an offline stand-in runs, without which its switches are refused.

The offline switches (``DASK_COILED__LOOPBACK_ADDRESSES``, dask config
``coiled.loopback-addresses``) make coiled connect to loopback addresses instead of the cloud's:
outside a test or demo that is a misconfiguration, or an attack. They are honoured only while
``$COILED_STANDIN`` names a live proof (see :func:`coiled_core.node.addresses.standin_running`):
a file under ``~/.cache/coiled/standins/`` that only this user may read and write, named by a
random token and holding the stand-in's pid, deleted when the stand-in stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from coiled_core.node.addresses import STANDIN_VARIABLE

__all__ = ["STANDIN_VARIABLE", "StandInProof", "standin_proof"]


class StandInProof:
    """One stand-in's proof: :meth:`create` when it starts, :meth:`remove` when it stops."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory or Path.home() / ".cache" / "coiled" / "standins"
        self.token = secrets.token_hex(16)
        self.path = self.directory / f"{self.token}.json"

    def create(self) -> StandInProof:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "token": self.token}, f)
        return self

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def environ(self) -> dict[str, str]:
        """The variable that names this proof, for the stand-in's clients and nodes."""
        return {STANDIN_VARIABLE: str(self.path)}


@contextlib.contextmanager
def standin_proof() -> Iterator[StandInProof]:
    """A proof for the duration of the block (for a stand-in without one of its own)."""
    proof = StandInProof().create()
    try:
        yield proof
    finally:
        proof.remove()
