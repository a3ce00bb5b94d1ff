"""Finding, loading and calling backend plugins.

Backends are found through the entry-point group ``coiled_core.backends`` (name = backend name,
value = what ``EntryPoint.load()`` resolves to the object holding the hook implementations: a
module, or ``module:object``), built-in ones exactly like third-party ones.
Listing backends imports only the plugin modules, which must import their cloud SDK lazily.
Every cluster gets a fresh :class:`Backend`, a plugin manager holding exactly one backend plus
the installed extensions (``coiled_core.extensions``), so a cluster only ever reaches its own
backend.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import pluggy
from pydantic import BaseModel

from coiled_core import hookspecs
from coiled_core.errors import (
    BackendContractError,
    BackendLoadError,
    BackendNotFoundError,
    ClusterSpecError,
    CoiledError,
    DuplicateBackendError,
)
from coiled_core.records import ClusterRecord, TLSPolicy
from coiled_core.spec import ClusterSpec, validate_backend_options

BACKEND_GROUP = "coiled_core.backends"
EXTENSION_GROUP = "coiled_core.extensions"


@dataclass
class PluginEntry:
    """One entry point of a plugin group and the distribution that declared it."""

    name: str
    #: The entry point's value: ``package.module`` or ``package.module:object``.
    module: str
    distribution: str
    version: str
    #: Why the plugin cannot be used, if it cannot (filled in by :func:`list_backends`).
    error: str | None = None

    def load(self) -> Any:
        """Load the plugin with ``EntryPoint.load()`` and check it fits the hook contract:
        the version it declares and the hooks it must implement. Failures become a
        :class:`BackendLoadError` naming the distribution and what is wrong."""
        entry_point = importlib.metadata.EntryPoint(self.name, self.module, BACKEND_GROUP)
        try:
            module = entry_point.load()
        except Exception as e:
            raise BackendLoadError(
                f"backend {self.name!r} (distribution {self.distribution} {self.version}) failed to "
                f"import: {type(e).__name__}: {e}. Reinstall it with its dependencies: "
                f"pip install --force-reinstall {self.distribution}"
            ) from e
        check_backend(module, f"backend {self.name!r} (distribution {self.distribution} {self.version})", self.distribution)
        return module


def check_backend(plugin: Any, what: str, distribution: str = "the backend") -> None:
    """Refuse a backend object that does not fit this core's hook contract: no or another
    ``HOOK_API_VERSION``, or a required hook missing. Raises :class:`BackendLoadError`."""
    version = getattr(plugin, "HOOK_API_VERSION", None)
    if version is None:
        raise BackendLoadError(
            f"{what} declares no HOOK_API_VERSION; this coiled-core needs backends made for hook API "
            f"version {hookspecs.HOOK_API_VERSION} (set HOOK_API_VERSION = {hookspecs.HOOK_API_VERSION} "
            "in the backend module once it implements that contract; see coiled_core.hookspecs)"
        )
    if version != hookspecs.HOOK_API_VERSION:
        raise BackendLoadError(
            f"{what} was built for hook API version {version}, but this coiled-core needs version "
            f"{hookspecs.HOOK_API_VERSION}; install a {distribution} release made for it"
        )
    implemented = {name for name in dir(plugin) if hasattr(getattr(plugin, name, None), f"{hookspecs.PROJECT_NAME}_impl")}
    missing = [hook for hook in hookspecs.REQUIRED_HOOKS if hook not in implemented]
    if missing:
        raise BackendLoadError(
            f"{what} does not implement the required hook(s) {', '.join(missing)} "
            "(functions decorated with @hookimpl; see coiled_core.hookspecs)"
        )


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

    Each method calls the hook of the same name, fills in the defaults of optional hooks and
    checks the answer against the contract.
    """

    def __init__(self, entry: PluginEntry, module: Any, extensions: Iterable[tuple[str, Any]] = ()):
        self.name = entry.name
        self.entry = entry
        self.plugin_manager = pm = _new_plugin_manager()
        pm.register(module, name=f"backend:{entry.name}")
        for ext_name, extension in extensions:
            pm.register(extension, name=f"extension:{ext_name}")
        pm.check_pending()

    def _call(self, hook: str, **kwargs: Any) -> Any:
        result = getattr(self.plugin_manager.hook, hook)(**kwargs)
        if result is None and hook in ("backend_options_model", "provision", "scale", "teardown", "list_clusters", "gc", "logs"):
            raise BackendLoadError(f"backend {self.name!r}: its {hook!r} hook returned nothing (see coiled_core.hookspecs)")
        return result

    def options_model(self) -> type[BaseModel]:
        return self._call("backend_options_model")

    def validate_options(self, options: Mapping[str, Any]) -> BaseModel:
        return validate_backend_options(self.options_model(), options, self.name)

    def options_from_record(self, record: ClusterRecord) -> BaseModel:
        return self.options_model().model_validate(record.spec.get("backend_options", {}))

    def keyword_options(self) -> dict[str, str]:
        from coiled_core.keywords import GENERIC_KEYWORDS

        mapping = dict(self._call("keyword_options") or {})
        unknown = set(mapping) - set(GENERIC_KEYWORDS)
        if unknown:
            raise BackendContractError(
                f"backend {self.name!r} broke the hook contract: keyword_options names {sorted(unknown)}, "
                f"which are not generic keywords ({', '.join(GENERIC_KEYWORDS)})"
            )
        return mapping

    def validate_spec_options(self, spec: ClusterSpec) -> BaseModel:
        """The backend's options for ``spec``: its ``backend_options`` plus the generic keywords
        the backend maps, validated; errors name the keyword the user wrote."""
        from coiled_core.keywords import GENERIC_KEYWORDS, apply_generic_keywords

        model = self.options_model()
        aliases = {}
        for field, info in model.model_fields.items():
            names = [info.alias] if isinstance(info.alias, str) else []
            if isinstance(info.validation_alias, str):
                names.append(info.validation_alias)
            elif info.validation_alias is not None and hasattr(info.validation_alias, "choices"):
                names += [c for c in info.validation_alias.choices if isinstance(c, str)]
            aliases[field] = tuple(n for n in names if n != field)
        conflicts: dict[str, tuple[str, Any]] = {}
        options, sources = apply_generic_keywords(
            {k: getattr(spec, k) for k in GENERIC_KEYWORDS}, spec.backend_options, self.keyword_options(), self.name,
            aliases, conflicts,
        )
        validated = validate_backend_options(model, options, self.name, sources)
        for key, (keyword, value) in conflicts.items():
            # Given both ways: the same once validated is fine ("everyone" and "0.0.0.0/0").
            field = next(f for f, names in aliases.items() if key == f or key in names)
            other = validate_backend_options(model, {**options, key: value}, self.name, {key: keyword})
            if getattr(other, field) != getattr(validated, field):
                raise ClusterSpecError(
                    f"{keyword}={value!r} and backend_options {{{key!r}: {options[key]!r}}} disagree; give only one of them"
                )
        return validated

    def tls_policy(self, options: BaseModel) -> TLSPolicy:
        return self._call("tls_policy", options=options) or TLSPolicy()

    def preflight(self, spec: ClusterSpec, options: BaseModel) -> None:
        self._call("preflight", spec=spec, options=options)

    def provision(self, spec: ClusterSpec, options: BaseModel, tls: Any = None) -> ClusterRecord:
        record = self._call("provision", spec=spec, options=options, tls=tls)
        scheme = "tls://" if spec.security else "tcp://"
        address = record.scheduler_address or ""
        if not address.startswith(scheme):
            raise BackendContractError(
                f"backend {self.name!r} broke the hook contract: with security={bool(spec.security)} the "
                f"scheduler address must start with {scheme!r}, but provision returned {address or None!r} "
                "(see 'TLS' in coiled_core.hookspecs)"
            )
        return record

    def claim_name(self, name: str, options: BaseModel) -> bool:
        return bool(self._call("claim_name", name=name, options=options))

    def gc(self, options: BaseModel) -> list[str]:
        return self._call("gc", options=options)

    def scale(self, record: ClusterRecord, options: BaseModel, n_workers: int, retired: list[str], tls: Any = None) -> ClusterRecord:
        return self._call("scale", record=record, options=options, n_workers=n_workers, retired=list(retired), tls=tls)

    def describe(self, name: str, options: BaseModel) -> ClusterRecord | None:
        record = self._call("describe", name=name, options=options)
        if record is not None and record.state.is_live and not record.spec:
            raise BackendContractError(
                f"backend {self.name!r} broke the hook contract: describe({name!r}) returned a live record "
                "without its spec (record.spec must hold the spec the cluster was made from)"
            )
        return record

    def teardown(self, record: ClusterRecord, options: BaseModel) -> ClusterRecord:
        return self._call("teardown", record=record, options=options)

    def cluster_started(self, record: ClusterRecord, options: BaseModel) -> None:
        self._call("cluster_started", record=record, options=options)

    def dashboard_url(self, record: ClusterRecord, options: BaseModel) -> str | None:
        url = self._call("dashboard_url", record=record, options=options)
        return url if url is not None else record.dashboard_url

    def list_clusters(self, options: BaseModel) -> list[ClusterRecord]:
        return self._call("list_clusters", options=options)

    def logs(self, record: ClusterRecord, options: BaseModel, tail: int | None = None) -> dict[str, str]:
        return self._call("logs", record=record, options=options, tail=tail)

    def build_environment(self, software: Any, options: BaseModel) -> str:
        built = self._call("build_environment", software=software, options=options)
        if built is None:
            raise ClusterSpecError(
                f"backend {self.name!r} does not build software environments ahead of time: its clusters build "
                f"{software.name!r} when they first need it"
            )
        return built


def _load_extensions(path: list[str] | None) -> list[tuple[str, Any]]:
    loaded = []
    for entry in _entries(EXTENSION_GROUP, path):
        try:
            loaded.append((entry.name, importlib.metadata.EntryPoint(entry.name, entry.module, EXTENSION_GROUP).load()))
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
