"""The node agent's code as one zip file, for nodes whose Python environment lacks coiled-core.

coiled-core is not on a package index, so a software environment built from a user's spec cannot
``pip install`` it. The agent needs only the pure-Python ``coiled_core`` package (plus pluggy and
the environment's own dask and distributed), so it travels as a zip on ``PYTHONPATH``: zipimport
loads it unchanged. The file is named by a hash of its content, so a changed coiled-core never
meets an old bundle, and building it twice gives the same file.

What a node runs must be what this machine has: the directory must be this user's alone (owned
by them, writable by nobody else), and a zip found there is used only if the sha256 of its
entries is the one of the files it is made from; anything else there is rebuilt over.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import zipfile
from pathlib import Path

import coiled_core

#: What the agent needs from the environment besides distributed (which every spec has).
AGENT_REQUIREMENTS = ("pluggy",)


def _package_files() -> list[tuple[str, Path]]:
    package = Path(coiled_core.__file__).parent
    files = []
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".yaml"):
            files.append((f"coiled_core/{path.relative_to(package).as_posix()}", path))
    return files


def _module_files(module: str) -> list[tuple[str, Path]]:
    """A backend's module (its node add-on) and the ``__init__.py`` of each package above it."""
    import importlib.util

    files = []
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise ValueError(f"cannot bundle {name!r}: it is not a pure-Python module on this machine")
        relative = "/".join(parts[:depth]) + ("/__init__.py" if spec.submodule_search_locations is not None else ".py")
        files.append((relative, Path(spec.origin)))
    return files


def _digest(entries: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, data in entries:
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()


def _matches(path: Path, names: list[str], digest: str) -> bool:
    """Whether the zip at ``path`` holds exactly ``names``, whose content has sha256 ``digest``."""
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.namelist() != names:
                return False
            return _digest([(name, archive.read(name)) for name in names]) == digest
    except (OSError, zipfile.BadZipFile, KeyError):
        return False


def _private_directory(directory: Path) -> None:
    """Make ``directory`` (0700) if missing; refuse one that another user owns; make one of this
    user's that others may write 0700 (what they may have put there is checked anyway)."""
    from coiled_core.store import make_private_dirs

    make_private_dirs(str(directory))
    status = os.lstat(directory)
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
        raise PermissionError(f"{directory}: the agent bundle's directory must be a directory of this user's "
                              "(it holds code every node runs)")
    if status.st_mode & 0o022:
        os.chmod(directory, 0o700)


def agent_bundle(directory: Path, extra_modules: tuple[str, ...] = ()) -> Path:
    """Write (once) and return the zip of ``coiled_core`` (and ``extra_modules``, a backend's
    node add-on) in ``directory``, which must be this user's alone; a zip already there is
    returned only if its content's sha256 is that of the files it is made from."""
    files = _package_files()
    for module in extra_modules:
        files += [item for item in _module_files(module) if item not in files]
    entries = [(name, path.read_bytes()) for name, path in files]
    digest = _digest(entries)
    target = Path(directory) / f"coiled_core-{digest[:16]}.zip"
    _private_directory(target.parent)
    if _matches(target, [name for name, _ in entries], digest):
        return target
    tmp = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            # A fixed timestamp keeps the archive's bytes a function of its content only.
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    os.replace(tmp, target)
    return target
