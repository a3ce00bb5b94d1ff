"""Finding, loading and calling backend plugins.

Backends are found through the entry-point group ``coiled_core.backends`` (name = backend name,
value = module holding the hook implementations), built-in ones exactly like third-party ones.
Listing backends imports only the plugin modules, which must import their cloud SDK lazily.
Every cluster gets a fresh :class:`Backend`, a plugin manager holding exactly one backend plus
the installed extensions (``coiled_core.extensions``), so a cluster only ever reaches its own
backend.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterable, Mapping

import pluggy
from pydantic import BaseModel

from coiled_core import hookspecs
from coiled_core.errors import (
    BackendLoadError,
    BackendNotFoundError,
    CoiledError,
    DuplicateBackendError,
)
from coiled_core.records import ClusterRecord
from coiled_core.spec import ClusterSpec, validate_backend_options

BACKEND_GROUP = "coiled_core.backends"
EXTENSION_GROUP = "coiled_core.extensions"


@dataclass
class PluginEntry:
    """One entry point of a plugin group and the distribution that declared it."""

    name: str
    module: str
    distribution: str
    version: str
    #: Why the plugin cannot be used, if it cannot (filled in by :func:`list_backends`).
    error: str | None = None

    def load(self) -> ModuleType:
        """Import the plugin's module; failures become a :class:`BackendLoadError`."""
        try:
            module = importlib.import_module(self.module)
        except Exception as e:
            raise BackendLoadError(
                f"backend {self.name!r} (distribution {self.distribution} {self.version}) failed to "
                f"import: {type(e).__name__}: {e}. Reinstall it with its dependencies: "
                f"pip install --force-reinstall {self.distribution}"
            ) from e
        version = getattr(module, "HOOK_API_VERSION", hookspecs.HOOK_API_VERSION)
        if version != hookspecs.HOOK_API_VERSION:
            raise BackendLoadError(
                f"backend {self.name!r} (distribution {self.distribution} {self.version}) was built "
                f"for hook API version {version}, but this coiled-core speaks version "
                f"{hookspecs.HOOK_API_VERSION}; install a {self.distribution} release made for it"
            )
        return module


def _entries(group: str, path: list[str] | None) -> list[PluginEntry]:
    """All entry points of ``group``; raises if two distributions claim one name."""
    found: dict[str, PluginEntry] = {}
    seen_distributions: set[str] = set()
    for dist in importlib.metadata.distributions(**({"path": path} if path is not None else {})):
        # entry_points.txt first: parsing every distribution's METADATA would cost tens of ms.
        matching = [ep for ep in dist.entry_points if ep.group == group]
        if not matching:
            continue
        dist_name = dist.metadata["Name"] or "unknown"
        key = dist_name.lower().replace("_", "-")
        # The same distribution can be visible twice on sys.path; the first one shadows the rest.
        if key in seen_distributions:
            continue
        seen_distributions.add(key)
        for ep in matching:
            entry = PluginEntry(ep.name, ep.value, dist_name, dist.version)
            if ep.name in found:
                other = found[ep.name]
                raise DuplicateBackendError(
                    f"two installed distributions claim the plugin name {ep.name!r} in {group}: "
                    f"{other.distribution} {other.version} ({other.module}) and {dist_name} "
                    f"{dist.version} ({ep.value}); uninstall one of them"
                )
            found[ep.name] = entry
    return sorted(found.values(), key=lambda e: e.name)


def discover_backends(path: list[str] | None = None) -> dict[str, PluginEntry]:
    """Installed backends by name, without importing any of them."""
    return {entry.name: entry for entry in _entries(BACKEND_GROUP, path)}


def list_backends(path: list[str] | None = None) -> list[PluginEntry]:
    """Installed backends, each imported to check it works; broken ones carry ``error``."""
    entries = list(discover_backends(path).values())
    for entry in entries:
        try:
            entry.load()
        except BackendLoadError as e:
            entry.error = str(e)
    return entries


def _new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs.BackendSpec)
    return pm


class Backend:
    """One backend plugin, in a plugin manager of its own, with the core's calls into it.

    Each method calls the hook of the same name and checks that the backend answered.
    """

    def __init__(self, entry: PluginEntry, module: ModuleType, extensions: Iterable[tuple[str, Any]] = ()):
        self.name = entry.name
        self.entry = entry
        self.plugin_manager = pm = _new_plugin_manager()
        pm.register(module, name=f"backend:{entry.name}")
        for ext_name, extension in extensions:
            pm.register(extension, name=f"extension:{ext_name}")
        pm.check_pending()

    def _call(self, hook: str, **kwargs: Any) -> Any:
        result = getattr(self.plugin_manager.hook, hook)(**kwargs)
        if result is None and hook not in ("describe", "dashboard_url"):
            raise BackendLoadError(f"backend {self.name!r} does not implement the {hook!r} hook")
        return result

    def options_model(self) -> type[BaseModel]:
        return self._call("backend_options_model")

    def validate_options(self, options: Mapping[str, Any]) -> BaseModel:
        return validate_backend_options(self.options_model(), options, self.name)

    def options_from_record(self, record: ClusterRecord) -> BaseModel:
        return self.options_model().model_validate(record.spec.get("backend_options", {}))

    def provision(self, spec: ClusterSpec, options: BaseModel) -> ClusterRecord:
        return self._call("provision", spec=spec, options=options)

    def claim_name(self, name: str, options: BaseModel) -> bool:
        return bool(self._call("claim_name", name=name, options=options))

    def gc(self, options: BaseModel) -> list[str]:
        return self._call("gc", options=options)

    def scale(self, record: ClusterRecord, n_workers: int, retired: list[str]) -> ClusterRecord:
        return self._call("scale", record=record, n_workers=n_workers, retired=list(retired))

    def describe(self, name: str, options: BaseModel) -> ClusterRecord | None:
        return self._call("describe", name=name, options=options)

    def teardown(self, record: ClusterRecord) -> ClusterRecord:
        return self._call("teardown", record=record)

    def dashboard_url(self, record: ClusterRecord) -> str | None:
        return self._call("dashboard_url", record=record)

    def list_clusters(self, options: BaseModel) -> list[ClusterRecord]:
        return self._call("list_clusters", options=options)

    def logs(self, record: ClusterRecord, tail: int | None = None) -> dict[str, str]:
        return self._call("logs", record=record, tail=tail)


def _load_extensions(path: list[str] | None) -> list[tuple[str, ModuleType]]:
    loaded = []
    for entry in _entries(EXTENSION_GROUP, path):
        try:
            loaded.append((entry.name, importlib.import_module(entry.module)))
        except Exception as e:
            warnings.warn(
                f"extension {entry.name!r} ({entry.distribution} {entry.version}) failed to import and "
                f"is skipped: {type(e).__name__}: {e}",
                stacklevel=3,
            )
    return loaded


def load_backend(name: str, path: list[str] | None = None) -> Backend:
    """A fresh :class:`Backend` for the installed backend ``name``.

    ``path`` restricts discovery to those directories (tests use it); default ``sys.path``.
    Raises :class:`BackendNotFoundError` listing the installed backends, or
    :class:`BackendLoadError` if the plugin cannot be imported.
    """
    backends = discover_backends(path)
    if name not in backends:
        installed = ", ".join(repr(n) for n in backends) or "none"
        raise BackendNotFoundError(
            f"backend={name!r} is not installed; installed backends: {installed}. "
            f"A backend is a package registering an entry point in the {BACKEND_GROUP!r} group."
        )
    entry = backends[name]
    module = entry.load()
    try:
        return Backend(entry, module, _load_extensions(path))
    except pluggy.PluginValidationError as e:
        raise BackendLoadError(f"backend {name!r} ({entry.distribution}) does not fit the hook contract: {e}") from e


__all__ = [
    "Backend",
    "CoiledError",
    "PluginEntry",
    "discover_backends",
    "list_backends",
    "load_backend",
]
