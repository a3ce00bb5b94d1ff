"""A directory as an artifact store: a store program for testing boot scripts without a cloud.

:func:`directory_store` returns a :class:`~coiled_core.node.bootstrap.NodeStore` whose program
keeps objects as files under a directory, with the contract of every backend's store program
(``get``/``put``/``create``, exit 2 for a missing object, exit 3 for an existing one;
``create`` is atomic through ``os.link``). Backend authors use it to run the core's boot script
for real in their own tests; the core's tests use it to check the boot script and the pack
cache. It counts calls in ``<directory>/.calls`` (one line per call: ``command key``).
"""

from __future__ import annotations

import os
from pathlib import Path

from coiled_core.node.bootstrap import NodeStore

PROGRAM = r'''
import json
import os
import shutil
import sys
import tempfile

root = json.loads(os.environ["COILED_STORE"])["directory"]
command, args = sys.argv[1], sys.argv[2:]
key = args[0] if command == "get" else args[1]
if key.startswith("/") or ".." in key.split("/"):
    sys.exit(f"bad key {key!r}")
with open(os.path.join(root, ".calls"), "a") as calls:
    calls.write(f"{command} {key}\n")
path = os.path.join(root, key)
if command == "get":
    if not os.path.isfile(path):
        sys.exit(2)
    shutil.copyfile(path, args[1])
    sys.exit(0)
os.makedirs(os.path.dirname(path), exist_ok=True)
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
os.close(fd)
shutil.copyfile(args[0], tmp)
if command == "put":
    os.replace(tmp, path)
elif command == "create":
    try:
        os.link(tmp, path)
    except FileExistsError:
        sys.exit(3)
    finally:
        os.unlink(tmp)
else:
    os.unlink(tmp)
    sys.exit(f"unknown command {command!r}")
'''


def directory_store(directory: str | os.PathLike[str]) -> NodeStore:
    """A store keeping objects as files under ``directory`` (created)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    return NodeStore(program=PROGRAM.lstrip(), requirements=(), settings={"directory": os.fspath(directory)})
