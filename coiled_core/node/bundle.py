"""The node agent's code as one zip file, for nodes whose Python environment lacks coiled-core.

coiled-core is not on a package index, so a software environment built from a user's spec cannot
``pip install`` it. The agent needs only the pure-Python ``coiled_core`` package (plus pluggy and
the environment's own dask and distributed), so it travels as a zip on ``PYTHONPATH``: zipimport
loads it unchanged. The file is named by a hash of its content, so a changed coiled-core never
meets an old bundle, and building it twice gives the same file.
"""

from __future__ import annotations

import hashlib
import os
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


def agent_bundle(directory: Path, extra_modules: tuple[str, ...] = ()) -> Path:
    """Write (once) and return the zip of ``coiled_core`` (and ``extra_modules``, a backend's
    node add-on) in ``directory``."""
    files = _package_files()
    for module in extra_modules:
        files += [item for item in _module_files(module) if item not in files]
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    target = Path(directory) / f"coiled_core-{digest.hexdigest()[:16]}.zip"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path in files:
            # A fixed timestamp keeps the archive's bytes a function of its content only.
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    os.replace(tmp, target)
    return target
