"""``ClusterSpec``: the validated, normalised request behind every ``coiled.Cluster``.

Every keyword of ``coiled.Cluster`` defaults to ``None`` ("not given") and is resolved here with
the precedence explicit keyword > named configuration > dask config (``coiled.*``) > built-in
defaults (``coiled.yaml``). Validation happens once, before any resource exists, and every
failure is a :class:`~coiled_core.errors.ClusterSpecError` naming the parameter and what would
be valid.
"""

from __future__ import annotations

import difflib
import getpass
import inspect
import re
import secrets
from typing import Any, Mapping

import importlib

from dask.utils import parse_bytes, parse_timedelta
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coiled_core import config
from coiled_core.keywords import GENERIC_KEYWORDS
from coiled_core.errors import ClusterSpecError

#: Cluster names as Coiled accepts them: letters of either case, digits, ``_`` and ``-``. A backend
#: whose resources need a stricter form (DNS labels, label values) derives it with
#: :func:`coiled_core.names.dns_label` and keeps the user's name on the resource.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: ``account/name`` or a bare ``name`` (software environments, cluster configurations).
ACCOUNT_NAME_PATTERN = re.compile(r"^([a-z0-9][a-z0-9_-]*/)?[a-z0-9][a-z0-9._-]*$", re.IGNORECASE)
DOTTED_NAME_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: The keywords of ``coiled.Cluster`` that make up a spec, in the reference's order.
SPEC_KEYWORDS = (
    "name",
    "n_workers",
    "worker_cpu",
    "worker_gpu",
    "worker_memory",
    "scheduler_cpu",
    "scheduler_memory",
    "software",
    "worker_class",
    "worker_options",
    "scheduler_class",
    "scheduler_options",
    "idle_timeout",
    "environ",
    "shutdown_on_close",
    "backend",
    "backend_options",
    "configuration",
    "timeout",
    "no_client_timeout",
    "cluster_timeout",
    "security",
    # Today's Coiled keywords: the generic ones, which each backend maps onto its own options
    # (see coiled_core.keywords), then those the core itself resolves.
    *GENERIC_KEYWORDS,
    "container",
    "package_sync",
    "workspace",
)
#: Spot policies as Coiled names them (``compute_purchase_option`` is the older keyword).
SPOT_POLICIES = ("on-demand", "spot", "spot_with_fallback")


def _size(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a size such as '16 GiB' or a number of bytes, not {value!r}")
    try:
        n = parse_bytes(value) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        raise ValueError(f"{value!r} is not a size; give a string such as '16 GiB' or a number of bytes") from None
    if n <= 0:
        raise ValueError(f"must be a positive size such as '{what}', not {value!r}")
    return n


def _duration(value: Any, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a duration such as '{example}' or a number of seconds, not {value!r}")
    try:
        seconds = parse_timedelta(value, default="seconds")
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"{value!r} is not a duration; give a string such as '{example}' or a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"must be a positive duration such as '{example}', not {value!r}")
    return float(seconds)


def import_term(name: str) -> Any:
    """Import ``package.module.Name`` and return ``Name``."""
    module_name, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def _accepted_keywords(cls: type) -> set[str] | None:
    """Keyword names ``cls(...)`` accepts, following ``**kwargs`` up the MRO; None if unbounded."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        names.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names - {"self"}
    return None


def _is_nanny(cls: type) -> bool:
    from distributed import Nanny

    return inspect.isclass(cls) and issubclass(cls, Nanny)


def check_options_against_class(class_name: str, options: Mapping[str, Any], parameter: str) -> None:
    """Import ``class_name`` and check that it accepts every key of ``options``.

    Used when the cluster runs in the client's own software environment, where the import is
    meaningful. Raises ``ValueError`` naming ``parameter``.
    """
    try:
        cls = import_term(class_name)
    except Exception as e:  # an ImportError, or any error the module raises on import
        raise ValueError(f"{parameter.replace('_options', '_class')}={class_name!r} cannot be imported: {e}") from None
    if not callable(cls):
        raise ValueError(f"{parameter.replace('_options', '_class')}={class_name!r} is not a class")
    accepted = _accepted_keywords(cls) if inspect.isclass(cls) else None
    if accepted is not None and _is_nanny(cls):
        # A Nanny hands the keywords it does not take itself on to its worker class.
        worker_class = options.get("worker_class") or "distributed.Worker"
        try:
            worker_cls = import_term(worker_class) if isinstance(worker_class, str) else worker_class
        except Exception:
            return
        inner = _accepted_keywords(worker_cls) if inspect.isclass(worker_cls) else None
        accepted = None if inner is None else accepted | inner
    if accepted is None:
        return
    for key in options:
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{parameter} has {key!r}, which {class_name} does not accept{hint}")


def generate_cluster_name() -> str:
    """A unique, readable default name: the user's name plus random hex, as a DNS label."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "user"
    user = re.sub(r"[^a-z0-9-]", "-", user.lower()).strip("-")[:40] or "user"
    return f"{user}-{secrets.token_hex(4)}"


class AdaptiveRange(BaseModel):
    """``n_workers=[minimum, maximum]`` (or ``[minimum, initial, maximum]``): the client scales
    adaptively between the two."""

    model_config = ConfigDict(frozen=True)
    minimum: int
    maximum: int


def _vm_types(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"must be an instance type name or a list of them (e.g. ['m7i.xlarge']), not {value!r}")
    return [v.strip() for v in value]


def _disk_gib(value: Any) -> int | None:
    """Coiled's disk sizes: a whole number of GiB, or a size with units ("100 GiB")."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"must be a number of GiB (e.g. 100) or a size such as '100 GiB', not {value!r}")
    if isinstance(value, (int, float)):
        gib = int(value)
    else:
        gib = -(-_size(value, "100 GiB") // 2**30)  # round up to whole GiB
    if gib < 1:
        raise ValueError(f"must be at least 1 GiB, not {value!r}")
    return gib


class ClusterSpec(BaseModel):
    """A complete, valid cluster request. Build it with :func:`resolve_cluster_spec`."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    name: str
    #: Workers to start with (the minimum when adaptive).
    n_workers: int
    adaptive: AdaptiveRange | None = None
    worker_cpu: int
    #: Upper end of ``worker_cpu=[min, max]`` (the backend may pick anything in the range).
    worker_cpu_max: int | None = None
    worker_gpu: int
    worker_memory: int = Field(description="bytes")
    #: Upper end of ``worker_memory=[min, max]``, bytes.
    worker_memory_max: int | None = None
    scheduler_cpu: int
    scheduler_memory: int = Field(description="bytes")
    software: str | None = None
    worker_class: str
    worker_options: dict[str, Any] = Field(default_factory=dict)
    scheduler_class: str
    #: Always holds ``idle_timeout`` in seconds (``None`` disables it).
    scheduler_options: dict[str, Any] = Field(default_factory=dict)
    environ: dict[str, str] = Field(default_factory=dict)
    shutdown_on_close: bool | None = None
    backend: str
    backend_options: dict[str, Any] = Field(default_factory=dict)
    configuration: str | None = None
    #: Seconds allowed for the whole start.
    timeout: float
    #: Seconds without any client (or live ``Cluster`` object) before the cluster ends itself.
    no_client_timeout: float | None = None
    #: Hard cap on the cluster's lifetime, in seconds.
    cluster_timeout: float | None = None
    #: TLS between client, scheduler and workers; None: the backend's default (on, except local).
    security: bool | None = None

    # -- today's Coiled keywords (generic: each backend maps those it understands) ------------
    region: str | None = None
    worker_vm_types: list[str] | None = None
    scheduler_vm_types: list[str] | None = None
    spot_policy: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    arm: bool | None = None
    #: GiB.
    worker_disk_size: int | None = None
    #: GiB.
    scheduler_disk_size: int | None = None
    #: A container image used as an ad hoc software environment.
    container: str | None = None
    #: Coiled's package sync and its variants (``package_sync_ignore``, ...), as given.
    package_sync: dict[str, Any] | None = None
    allow_ssh: bool | None = None
    allow_ingress_from: str | None = None
    use_best_zone: bool | None = None
    scheduler_gpu: bool | None = None
    worker_gpu_type: str | None = None
    #: The account (Coiled's workspace) of bare software environment and configuration names.
    workspace: str | None = None

    @property
    def idle_timeout(self) -> float | None:
        return self.scheduler_options.get("idle_timeout")

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> str:
        if not isinstance(v, str) or not NAME_PATTERN.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a valid cluster name; use 1 to 128 letters, digits, '_' and '-' "
                "(e.g. 'production' or 'My_Cluster-2')"
            )
        return v

    @field_validator("worker_vm_types", "scheduler_vm_types", mode="before")
    @classmethod
    def _vm_types(cls, v: Any) -> list[str] | None:
        return _vm_types(v)

    @field_validator("worker_disk_size", "scheduler_disk_size", mode="before")
    @classmethod
    def _disk(cls, v: Any) -> int | None:
        return _disk_gib(v)

    @field_validator("spot_policy", mode="before")
    @classmethod
    def _spot_policy(cls, v: Any) -> str | None:
        if v is not None and v not in SPOT_POLICIES:
            raise ValueError(f"{v!r} is not a spot policy; use one of {', '.join(repr(p) for p in SPOT_POLICIES)}")
        return v

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v: Any) -> dict[str, str]:
        if v is None:
            return {}
        if not isinstance(v, Mapping) or not all(isinstance(k, str) and k for k in v):
            raise ValueError(f"must be a mapping of tag names to values (e.g. {{'team': 'data'}}), not {v!r}")
        out = {}
        for key, value in v.items():
            if isinstance(value, (dict, list, tuple, set)) or value is None:
                raise ValueError(f"value of tag {key!r} must be a string, not {value!r}")
            out[key] = str(value)
        return out

    @field_validator("arm", "allow_ssh", "use_best_zone", "scheduler_gpu", mode="before")
    @classmethod
    def _optional_bool(cls, v: Any) -> bool | None:
        if v is not None and not isinstance(v, bool):
            raise ValueError(f"must be True or False, not {v!r}")
        return v

    @field_validator("region", "container", "allow_ingress_from", "worker_gpu_type", "workspace", mode="before")
    @classmethod
    def _optional_text(cls, v: Any) -> str | None:
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise ValueError(f"must be a non-empty string, not {v!r}")
        return v.strip() if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _n_workers(cls, data: Any) -> Any:
        v = data.get("n_workers")
        if isinstance(v, (list, tuple)):
            if len(v) not in (2, 3) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                raise ClusterSpecError(
                    f"n_workers: {v!r} is not valid; give a number of workers (e.g. 5), or "
                    "[minimum, maximum] or [minimum, initial, maximum] for adaptive scaling (e.g. [2, 10])"
                )
            low, initial, high = (v[0], v[0], v[1]) if len(v) == 2 else tuple(v)
            if low < 0 or high < low or high == 0 or not low <= initial <= high:
                raise ClusterSpecError(
                    f"n_workers: {list(v)} is not a valid range; need 0 <= minimum <= maximum and maximum >= 1 "
                    "(and minimum <= initial <= maximum for [minimum, initial, maximum])"
                )
            data = {**data, "n_workers": initial, "adaptive": {"minimum": low, "maximum": high}}
        elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ClusterSpecError(
                f"n_workers: {v!r} is not valid; give a number of workers >= 0 (e.g. 5) or "
                "[minimum, maximum] for adaptive scaling (e.g. [2, 10])"
            )
        for key, parse in (("worker_cpu", None), ("worker_memory", _size)):
            value = data.get(key)
            if isinstance(value, (list, tuple)):
                # Coiled's [min, max] range: the minimum is what is asked for; the backend may
                # choose a machine anywhere in the range.
                if len(value) != 2 or any(x is None for x in value):
                    raise ClusterSpecError(f"{key}: {value!r} is not valid; give one value or [minimum, maximum]")
                data = {**data, key: value[0], f"{key}_max": value[1]}
        return data

    @model_validator(mode="after")
    def _ranges(self) -> "ClusterSpec":
        if self.worker_cpu_max is not None and self.worker_cpu_max < self.worker_cpu:
            raise ClusterSpecError(f"worker_cpu: [{self.worker_cpu}, {self.worker_cpu_max}] is not a range (maximum < minimum)")
        if self.worker_memory_max is not None and self.worker_memory_max < self.worker_memory:
            raise ClusterSpecError("worker_memory: the range's maximum is below its minimum")
        return self

    @field_validator("worker_cpu_max", mode="before")
    @classmethod
    def _cpu_max(cls, v: Any) -> int | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"must be a whole number of CPUs >= 1, not {v!r}")
        return v

    @field_validator("worker_memory_max", mode="before")
    @classmethod
    def _memory_max(cls, v: Any) -> int | None:
        return None if v is None else _size(v, "32 GiB")

    @field_validator("worker_cpu", "scheduler_cpu", mode="before")
    @classmethod
    def _cpu(cls, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"must be a whole number of CPUs >= 1 (e.g. 4), not {v!r}")
        return v

    @field_validator("worker_gpu", mode="before")
    @classmethod
    def _gpu(cls, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"must be a whole number of GPUs >= 0 (e.g. 1), not {v!r}")
        return v

    @field_validator("worker_memory", "scheduler_memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> int:
        return _size(v, "16 GiB")

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> float:
        return _duration(v, "20 minutes")

    @field_validator("no_client_timeout", "cluster_timeout", mode="before")
    @classmethod
    def _optional_duration(cls, v: Any) -> float | None:
        if v is None or v is False:
            return None
        return _duration(v, "2 minutes")

    @field_validator("software", "configuration", mode="before")
    @classmethod
    def _account_name(cls, v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, str) or not ACCOUNT_NAME_PATTERN.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid name; use 'account/name' or 'name' (e.g. 'examples/scaling-xgboost')")
        return v

    @field_validator("worker_class", "scheduler_class", mode="before")
    @classmethod
    def _class_name(cls, v: Any) -> str:
        if not isinstance(v, str) or not DOTTED_NAME_PATTERN.fullmatch(v):
            raise ValueError(f"{v!r} is not an importable class path; use 'module.Class' (e.g. 'distributed.Nanny')")
        return v

    @field_validator("worker_options", "scheduler_options", "backend_options", mode="before")
    @classmethod
    def _options(cls, v: Any) -> dict[str, Any]:
        if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
            raise ValueError(f"must be a mapping of keyword names to values, not {v!r}")
        return dict(v)

    @field_validator("scheduler_options")
    @classmethod
    def _scheduler_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("idle_timeout") is not None:
            try:
                v["idle_timeout"] = _duration(v["idle_timeout"], "2 hours")
            except ValueError as e:
                raise ValueError(f"['idle_timeout'] {e}") from None
        return v

    @field_validator("environ", mode="before")
    @classmethod
    def _environ(cls, v: Any) -> dict[str, str]:
        if not isinstance(v, Mapping):
            raise ValueError(f"must be a mapping of variable names to strings, not {v!r}")
        out = {}
        for key, value in v.items():
            if not isinstance(key, str) or not ENV_NAME_PATTERN.fullmatch(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if isinstance(value, (bool, int, float)):
                value = str(value)  # as Coiled does: numbers and booleans become strings
            if not isinstance(value, str):
                raise ValueError(f"value of {key!r} must be a string, number or boolean, not {value!r}")
            out[key] = value
        return out

    @field_validator("shutdown_on_close", "security", mode="before")
    @classmethod
    def _bool_or_none(cls, v: Any) -> bool | None:
        if v is not None and not isinstance(v, bool):
            raise ValueError(f"must be True, False or None, not {v!r}")
        return v

    @field_validator("backend", mode="before")
    @classmethod
    def _backend(cls, v: Any) -> str:
        if not isinstance(v, str) or not v:
            raise ValueError(f"must be the name of an installed backend (e.g. 'local'), not {v!r}")
        return v


def _format_validation_error(error: ValidationError, prefix: str = "") -> str:
    lines = []
    for item in error.errors():
        where = prefix + (".".join(str(part) for part in item["loc"]) or "parameters")
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "is not a coiled.Cluster parameter"
        # A model-level error (n_workers) already names its parameter.
        lines.append(f"{where}: {message}" if item["loc"] else message)
    return "Invalid cluster parameters:\n  " + "\n  ".join(lines) if len(lines) > 1 else lines[0]


def resolve_cluster_spec(
    keywords: Mapping[str, Any],
    configuration_values: Mapping[str, Any] | None = None,
) -> ClusterSpec:
    """Resolve ``coiled.Cluster`` keywords into a validated :class:`ClusterSpec`.

    ``keywords`` maps keyword names to what the caller passed (``None`` = not given);
    ``configuration_values`` holds a named configuration's values, which sit between the
    keywords and dask config. Raises :class:`ClusterSpecError` naming the bad parameter.
    """
    from coiled_core.keywords import normalise

    keywords = normalise(keywords)
    unknown = set(keywords) - set(SPEC_KEYWORDS)
    if unknown:
        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, SPEC_KEYWORDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ClusterSpecError(f"{key!r} is not a coiled.Cluster parameter{hint}")
    configuration_values = normalise(configuration_values or {})

    def pick(key: str) -> Any:
        if keywords.get(key) is not None:
            return keywords[key]
        if configuration_values.get(key) is not None:
            return configuration_values[key]
        return config.get(key.replace("_", "-"))

    values: dict[str, Any] = {key: pick(key) for key in SPEC_KEYWORDS if key not in ("idle_timeout", "name")}
    values["name"] = generate_cluster_name() if keywords.get("name") is None else keywords["name"]

    backend = values["backend"]
    if keywords.get("backend_options") is None and configuration_values.get("backend_options") is None:
        per_backend = config.get("backend-options") or {}
        values["backend_options"] = per_backend.get(backend, {}) if isinstance(per_backend, Mapping) else per_backend

    # idle_timeout= is Coiled's shortcut for scheduler_options={"idle_timeout": ...}.
    scheduler_options = values["scheduler_options"]
    if not isinstance(scheduler_options, Mapping):
        raise ClusterSpecError(f"scheduler_options: must be a mapping of keyword names to values, not {scheduler_options!r}")
    scheduler_options = dict(scheduler_options)
    shortcut = keywords.get("idle_timeout")
    # Only explicit scheduler_options can contradict the explicit shortcut; lower layers yield to it.
    explicit_options = keywords.get("scheduler_options")
    if shortcut is not None and explicit_options is not None and scheduler_options.get("idle_timeout") is not None:
        try:
            same = _duration(shortcut, "2 hours") == _duration(scheduler_options["idle_timeout"], "2 hours")
        except ValueError:
            same = False
        if not same:
            raise ClusterSpecError(
                f"idle_timeout={shortcut!r} and scheduler_options={{'idle_timeout': "
                f"{scheduler_options['idle_timeout']!r}}} disagree; give only one of them"
            )
    if shortcut is not None:
        try:
            scheduler_options["idle_timeout"] = _duration(shortcut, "2 hours")
        except ValueError as e:
            raise ClusterSpecError(f"idle_timeout: {e}") from None
    elif "idle_timeout" not in scheduler_options or (
        explicit_options is None
        and configuration_values.get("scheduler_options") is None
        and configuration_values.get("idle_timeout") is not None
    ):
        # A configuration's idle_timeout also outranks scheduler_options from dask config.
        scheduler_options["idle_timeout"] = configuration_values.get("idle_timeout") or config.get("idle-timeout")
    values["scheduler_options"] = scheduler_options

    # The no-client timeout guards clusters that close() would shut down; a cluster meant to
    # outlive its creator (shutdown_on_close=False) keeps running unless asked explicitly.
    if (
        keywords.get("no_client_timeout") is None
        and configuration_values.get("no_client_timeout") is None
        and values.get("shutdown_on_close") is False
    ):
        values["no_client_timeout"] = None

    try:
        spec = ClusterSpec(**values)
    except ClusterSpecError:
        raise
    except ValidationError as e:
        raise ClusterSpecError(_format_validation_error(e)) from None
    if spec.workspace and spec.software and "/" not in spec.software:
        # Coiled's workspace (or account) is the account of a bare software environment name.
        spec = spec.model_copy(update={"software": f"{spec.workspace}/{spec.software}"})

    # Class names are importable only where the cluster uses the client's own environment.
    if spec.software is None:
        for kind in ("scheduler", "worker"):
            try:
                check_options_against_class(getattr(spec, f"{kind}_class"), getattr(spec, f"{kind}_options"), f"{kind}_options")
            except ValueError as e:
                raise ClusterSpecError(str(e)) from None
    return spec


def validate_backend_options(
    model: type[BaseModel], options: Mapping[str, Any], backend: str, sources: Mapping[str, str] | None = None
) -> BaseModel:
    """Validate ``backend_options`` against a backend's model, suggesting close matches for typos.

    ``sources`` names the generic keyword an option's value came from (``{"region": "region"}``):
    an error in such an option names that keyword, which is what the user wrote.
    """
    fields = set(model.model_fields)
    fields.update(f.alias for f in model.model_fields.values() if f.alias)
    for key in options:
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            valid = ", ".join(sorted(fields)) or "none"
            raise ClusterSpecError(
                f"backend_options: {key!r} is not an option of the {backend!r} backend{hint} (valid: {valid})"
            )
    try:
        return model.model_validate(dict(options))
    except ValidationError as e:
        sources = sources or {}
        for item in e.errors():
            field = str(item["loc"][0]) if item["loc"] else ""
            if field in sources:
                message = item["msg"].removeprefix("Value error, ")
                raise ClusterSpecError(f"{sources[field]}: {message}") from None
        raise ClusterSpecError(_format_validation_error(e, prefix="backend_options.")) from None
