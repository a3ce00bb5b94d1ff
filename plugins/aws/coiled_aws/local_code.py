"""``include_local_code``: the client's working directory's Python files, as one zip for the nodes.

The client runs with its working directory on ``sys.path``; a software environment made with
``include_local_code=True`` gives the cluster the same. The client zips the ``.py`` files under
its working directory (:func:`archive`), uploads the zip to the artifact bucket under its sha256
(``agent/code-<sha256>.zip``, see :mod:`coiled_aws.artifacts`), and each node fetches it with its
own role, checks the sha256, unpacks it and puts it on ``PYTHONPATH`` for the node agent and its
workers (see :mod:`coiled_aws.bootstrap`).

What goes in: every file ending in ``.py`` under the working directory, at its relative path.
What is left out:

- hidden files and directories (a name starting with ``.``: ``.git``, ``.venv``, ``.cache``);
- ``__pycache__``, ``node_modules``, ``site-packages`` and ``dist-packages`` directories;
- virtual and conda environments (a directory holding ``pyvenv.cfg`` or ``conda-meta``);
- symbolic links to directories (not followed), and files that cannot be read;
- any file over :data:`MAX_FILE_BYTES` (1 MiB: a Python file that large is generated or data).

The zip is deterministic (sorted names, fixed timestamps and modes), so the same files give the
same key and are uploaded once. Over :data:`MAX_TOTAL_BYTES` (50 MiB of files) or
:data:`MAX_FILES` files is refused (:class:`LocalCodeError`): the working directory is then not
a project (a home directory, say), and the cluster would not start in time.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

#: A ``.py`` file larger than this is left out.
MAX_FILE_BYTES = 1 * 2**20
#: More than this much of ``.py`` files in all is refused.
MAX_TOTAL_BYTES = 50 * 2**20
#: More files than this is refused.
MAX_FILES = 20_000
#: Directory names never entered.
SKIPPED_DIRECTORIES = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages"})
#: The timestamp of every entry: the zip's bytes depend on the files' names and contents only.
_EPOCH = (2020, 1, 1, 0, 0, 0)


class LocalCodeError(ValueError):
    """The working directory holds too much to ship."""


def _is_environment(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, "pyvenv.cfg")) or os.path.isdir(os.path.join(directory, "conda-meta"))


def collect(directory: str | Path) -> list[tuple[str, Path]]:
    """The files to ship from ``directory``: ``(name in the zip, path)``, sorted by name.

    Raises :class:`LocalCodeError` over :data:`MAX_TOTAL_BYTES` or :data:`MAX_FILES`.
    """
    root = Path(directory).resolve()
    found: list[tuple[str, Path]] = []
    total = 0
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".") and d not in SKIPPED_DIRECTORIES and not _is_environment(os.path.join(current, d))
        )
        for name in sorted(files):
            if name.startswith(".") or not name.endswith(".py"):
                continue
            path = Path(current) / name
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size > MAX_FILE_BYTES:
                continue
            total += size
            found.append((path.relative_to(root).as_posix(), path))
            if total > MAX_TOTAL_BYTES or len(found) > MAX_FILES:
                raise LocalCodeError(
                    f"the Python files under {root} add up to more than {MAX_TOTAL_BYTES // 2**20} MiB or "
                    f"{MAX_FILES} files; start the cluster from your project's directory"
                )
    return sorted(found)


def archive(directory: str | Path) -> bytes:
    """The zip of :func:`collect`'s files (deterministic: the same files give the same bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, path in collect(directory):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zipped.writestr(info, data)
    return buffer.getvalue()
