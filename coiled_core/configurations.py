"""Cluster configurations: saved, shared, named groups of ``coiled.Cluster`` parameters.

A cluster configuration is Coiled's way for a team to agree on cluster shapes::

    import coiled

    coiled.create_cluster_configuration("gpu-large", n_workers=[2, 10], worker_gpu=1, worker_memory="64 GiB")
    cluster = coiled.Cluster(configuration="gpu-large", n_workers=4)   # the keyword wins

Names are ``account/name``. A bare ``name`` belongs to the default account: dask config
``coiled.account`` if set, else your user name (lowercased; characters other than letters,
digits, ``-`` and ``_`` become ``-``). Names are case-insensitive and kept in lowercase.

A configuration holds exactly the parameters it was given (as given: ``"16 GiB"`` stays a
string), never the resolved defaults. When a cluster uses it, each of its values sits between
the explicit keyword and dask config: explicit keyword > configuration > dask config
(``coiled.*``) > built-in defaults, key by key. A keyword left as ``None`` never hides a
configuration's value. See :func:`configuration_values` for what to hand to
:func:`~coiled_core.spec.resolve_cluster_spec`.

``coiled/default`` is built in: it is not stored, cannot be deleted or overwritten, and shows the
documented built-in defaults. Using it is the same as using no configuration at all, so dask
config still beats its values (see :func:`configuration_values`).

Storage: one JSON document per configuration in the :class:`~coiled_core.store.Store` (dask
config ``coiled.store``), at ``configurations/<account>/<name>.json``::

    {"format": 1, "name": "alice/gpu-large", "values": {"worker_gpu": 1, ...},
     "created_at": "2024-05-01T12:00:00+00:00", "updated_at": "2024-05-01T12:00:00+00:00"}

Everyone whose ``coiled.store`` points at the same place (a shared bucket, a shared directory)
sees the same configurations.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import warnings
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from coiled_core.accounts import (
    ACCOUNT_PATTERN,
    NAME_PATTERN,
    close_names,
    default_account,
    stored_names,
)
from coiled_core.errors import ClusterSpecError, CoiledError
from coiled_core.spec import SPEC_KEYWORDS, resolve_cluster_spec
from coiled_core.store import Store

__all__ = [
    "BUILTIN_DEFAULT",
    "CONFIGURATION_KEYWORDS",
    "BuiltinConfigurationError",
    "ClusterConfiguration",
    "ConfigurationNotFoundError",
    "configuration_values",
    "create_cluster_configuration",
    "default_account",
    "delete_cluster_configuration",
    "get_cluster_configuration",
    "list_cluster_configurations",
    "normalize_configuration_name",
]


class ConfigurationNotFoundError(CoiledError, LookupError):
    """No cluster configuration has the requested name."""


class BuiltinConfigurationError(CoiledError, ValueError):
    """A built-in configuration (``coiled/default``) cannot be overwritten or deleted."""


#: The parameters a configuration may hold: those of ``coiled.Cluster`` except ``name`` (a
#: configuration shapes many clusters) and ``configuration`` (configurations do not nest).
CONFIGURATION_KEYWORDS: tuple[str, ...] = tuple(k for k in SPEC_KEYWORDS if k not in ("name", "configuration"))

#: Full name of the built-in configuration.
BUILTIN_DEFAULT = "coiled/default"

#: The documented built-in defaults that ``coiled/default`` shows.
_BUILTIN_DEFAULT_VALUES: dict[str, Any] = {
    "n_workers": 4,
    "worker_cpu": 4,
    "worker_gpu": 0,
    "worker_memory": "16 GiB",
    "scheduler_cpu": 1,
    "scheduler_memory": "8 GiB",
    "worker_class": "distributed.Nanny",
    "scheduler_class": "distributed.Scheduler",
    "idle_timeout": "20 minutes",
    "backend": "local",
}

#: Version of the stored JSON document.
_FORMAT = 1
_PREFIX = "configurations"

_NAME_HELP = (
    "use 'account/name' or 'name': an account of up to 63 letters, digits, '-' and '_', and a name of "
    "up to 128 letters, digits, '.', '-' and '_', each starting with a letter or digit "
    "(e.g. 'my-team/gpu-large')"
)


class ClusterConfiguration(BaseModel):
    """A named group of ``coiled.Cluster`` parameters.

    ``values`` holds exactly the parameters the configuration was created with, as given
    (``software`` is one of them). ``created_at`` and ``updated_at`` are ``None`` for the built-in
    ``coiled/default``.
    """

    model_config = ConfigDict(frozen=True)

    #: Full name, ``account/name``.
    name: str
    values: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    #: True for ``coiled/default``, which is not stored and cannot be changed.
    builtin: bool = False

    @property
    def account(self) -> str:
        """The account part of :attr:`name`."""
        return self.name.partition("/")[0]

    @property
    def short_name(self) -> str:
        """The part of :attr:`name` after the account."""
        return self.name.partition("/")[2]

    @property
    def software(self) -> str | None:
        """The configuration's software environment, if it names one."""
        return self.values.get("software")


def _builtin_default() -> ClusterConfiguration:
    return ClusterConfiguration(name=BUILTIN_DEFAULT, values=dict(_BUILTIN_DEFAULT_VALUES), builtin=True)


# -- names -----------------------------------------------------------------------------------


def _check_account(account: Any) -> str:
    if not isinstance(account, str) or not ACCOUNT_PATTERN.fullmatch(account.lower()):
        raise ClusterSpecError(
            f"{account!r} is not a valid account name; use up to 63 letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    return account.lower()


def normalize_configuration_name(name: str) -> str:
    """``name`` as a full, lowercase ``account/name``; a bare name gets :func:`default_account`.

    Raises :class:`~coiled_core.errors.ClusterSpecError` if ``name`` is not a valid name.
    """
    if not isinstance(name, str):
        raise ClusterSpecError(f"configuration: {name!r} is not a valid configuration name; {_NAME_HELP}")
    account, sep, short = name.lower().rpartition("/")
    if (sep and not ACCOUNT_PATTERN.fullmatch(account)) or not NAME_PATTERN.fullmatch(short):
        raise ClusterSpecError(f"configuration: {name!r} is not a valid configuration name; {_NAME_HELP}")
    return f"{account if sep else default_account()}/{short}"


def _key(full_name: str) -> str:
    account, _, short = full_name.partition("/")
    return f"{_PREFIX}/{account}/{short}.json"


# -- values ----------------------------------------------------------------------------------


def _not_serialisable(value: Any) -> str | None:
    """Why ``value`` cannot be saved as JSON/YAML exactly, or None if it can."""
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value!r} is not a finite number"
    if isinstance(value, (list, tuple)):
        for item in value:
            why = _not_serialisable(item)
            if why:
                return why
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"the key {key!r} is not a string"
            why = _not_serialisable(item)
            if why:
                return why
        return None
    return f"{value!r} ({type(value).__name__}) is not a string, number, boolean, null, list or mapping"


def _check_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Unknown keys and unsaveable values; returns the JSON round-trip of the given values."""
    for key in values:
        if key == "name":
            raise ClusterSpecError(
                "'name' is not a cluster configuration parameter: a configuration is shared by many "
                "clusters; pass name= to coiled.Cluster instead"
            )
        if key == "configuration":
            raise ClusterSpecError("'configuration' is not a cluster configuration parameter: configurations do not nest")
        if key not in CONFIGURATION_KEYWORDS:
            close = difflib.get_close_matches(str(key), CONFIGURATION_KEYWORDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ClusterSpecError(f"{key!r} is not a coiled.Cluster parameter{hint}")
    for key, value in values.items():
        why = _not_serialisable(value)
        if why:
            raise ClusterSpecError(f"{key}: cannot be saved in a cluster configuration: {why}")
    return json.loads(json.dumps(dict(sorted(values.items())), allow_nan=False))


def _validate_backend_options(values: Mapping[str, Any], backend: str) -> None:
    """Check ``backend_options`` against the backend, as ``coiled.Cluster`` does, if it is installed here."""
    if values.get("backend_options") is None:
        return
    from coiled_core.errors import BackendLoadError, BackendNotFoundError
    from coiled_core.plugins import load_backend

    try:
        loaded = load_backend(backend)
    except (BackendNotFoundError, BackendLoadError):
        # A configuration may be meant for a backend that only its users have installed.
        return
    loaded.validate_options(values["backend_options"])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# -- reading and writing ---------------------------------------------------------------------


def _parse(full_name: str, data: bytes) -> ClusterConfiguration:
    try:
        document = json.loads(data)
        values = document["values"]
        if not isinstance(values, dict):
            raise TypeError("values is not a mapping")
        unknown = sorted(set(values) - set(CONFIGURATION_KEYWORDS))
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r}")
        return ClusterConfiguration(
            name=full_name,
            values=values,
            created_at=document.get("created_at"),
            updated_at=document.get("updated_at"),
        )
    except (ValueError, TypeError, KeyError) as e:  # bad JSON, or a document of the wrong shape
        raise ClusterSpecError(f"cluster configuration {full_name!r} in the store cannot be read: {e}") from None


def _load(store: Store, full_name: str) -> ClusterConfiguration | None:
    data = store.read(_key(full_name))
    return None if data is None else _parse(full_name, data)


def _not_found(store: Store, full_name: str, given: str) -> ConfigurationNotFoundError:
    known = sorted(set(stored_names(store, _PREFIX)) | {BUILTIN_DEFAULT})
    close = close_names(full_name, known)
    hint = f"; did you mean {', '.join(repr(n) for n in close)}?" if close else ""
    shown = repr(full_name) if given.lower() == full_name else f"{given!r} ({full_name!r})"
    return ConfigurationNotFoundError(f"no cluster configuration is named {shown}{hint}")


# -- public API ------------------------------------------------------------------------------


def create_cluster_configuration(name: str, software: str | None = None, **cluster_parameters: Any) -> ClusterConfiguration:
    """Save a cluster configuration called ``name`` and return it; an existing one is replaced.

    ``cluster_parameters`` are ``coiled.Cluster`` keywords (all but ``name`` and
    ``configuration``); ``None`` means "not given" and is not saved. They are validated exactly as
    ``coiled.Cluster`` validates them, yet saved as given: the configuration holds only these
    keys, so everything else still comes from dask config or the defaults when it is used.

    Raises :class:`~coiled_core.errors.ClusterSpecError` for an invalid name, an unknown
    parameter (with a close match), an invalid value or one that cannot be saved as JSON, and
    :class:`BuiltinConfigurationError` for ``coiled/default``. Nothing is saved on error.
    """
    full_name = normalize_configuration_name(name)
    if full_name == BUILTIN_DEFAULT:
        raise BuiltinConfigurationError(f"{BUILTIN_DEFAULT!r} is built in and cannot be overwritten; choose another name")
    given = {"software": software, **cluster_parameters}
    values = _check_values({key: value for key, value in given.items() if value is not None})
    spec = resolve_cluster_spec(values)
    _validate_backend_options(values, spec.backend)

    store = Store()
    now = _now()
    try:
        previous = _load(store, full_name)
    except ClusterSpecError:  # an unreadable document is simply replaced
        previous = None
    configuration = ClusterConfiguration(
        name=full_name,
        values=values,
        created_at=previous.created_at if previous is not None and previous.created_at else now,
        updated_at=now,
    )
    document = {
        "format": _FORMAT,
        "name": full_name,
        "values": values,
        "created_at": configuration.created_at.isoformat(),
        "updated_at": configuration.updated_at.isoformat(),
    }
    store.write(_key(full_name), json.dumps(document, indent=2, sort_keys=True).encode())
    return configuration


def get_cluster_configuration(name: str) -> ClusterConfiguration:
    """The cluster configuration called ``name`` (a bare name is in the default account).

    Raises :class:`ConfigurationNotFoundError`, listing close matches, if there is none.
    """
    full_name = normalize_configuration_name(name)
    if full_name == BUILTIN_DEFAULT:
        return _builtin_default()
    store = Store()
    configuration = _load(store, full_name)
    if configuration is None:
        raise _not_found(store, full_name, name)
    return configuration


def list_cluster_configurations(account: str | None = None) -> list[ClusterConfiguration]:
    """The cluster configurations of ``account`` (default: :func:`default_account`), by name.

    The built-in ``coiled/default`` is listed with the default account's configurations (it is
    usable from every account) and with account ``"coiled"``. Documents in the store that cannot
    be read are skipped with a warning.
    """
    acct = default_account() if account is None else _check_account(account)
    store = Store()
    found: list[ClusterConfiguration] = []
    if account is None or acct == "coiled":
        found.append(_builtin_default())
    for full_name in stored_names(store, _PREFIX, acct):
        if full_name == BUILTIN_DEFAULT:
            continue
        try:
            configuration = _load(store, full_name)
        except ClusterSpecError as e:
            warnings.warn(str(e), stacklevel=2)
            continue
        if configuration is not None:  # deleted while listing
            found.append(configuration)
    return sorted(found, key=lambda c: c.name)


def delete_cluster_configuration(name: str) -> None:
    """Delete the cluster configuration called ``name``.

    Raises :class:`ConfigurationNotFoundError` if there is none and
    :class:`BuiltinConfigurationError` for ``coiled/default``.
    """
    full_name = normalize_configuration_name(name)
    if full_name == BUILTIN_DEFAULT:
        raise BuiltinConfigurationError(f"{BUILTIN_DEFAULT!r} is built in and cannot be deleted")
    store = Store()
    key = _key(full_name)
    if not store.exists(key):
        raise _not_found(store, full_name, name)
    store.delete(key)


def configuration_values(name: str | None) -> dict[str, Any]:
    """What to pass as ``configuration_values`` to :func:`~coiled_core.spec.resolve_cluster_spec`.

    - ``None`` (no configuration): ``{}``.
    - ``"coiled/default"``: also ``{}``. Its values *are* the built-in defaults, which rank below
      dask config; passing them as configuration values would wrongly let them beat dask
      config. So using ``coiled/default`` is exactly the same as using no configuration.
    - any other name: a copy of the configuration's stored values (only the keys it was created
      with), so every other key still resolves from dask config and the defaults.

    Raises :class:`ConfigurationNotFoundError` for an unknown name and
    :class:`~coiled_core.errors.ClusterSpecError` for an invalid one.
    """
    if name is None:
        return {}
    configuration = get_cluster_configuration(name)
    if configuration.builtin:
        return {}
    return json.loads(json.dumps(configuration.values))
