"""Software environment specs: what a cluster's Python environment must contain.

A :class:`SoftwareEnvironment` is a *spec*, not a built environment: a list of pip requirements,
a conda ``environment.yml`` mapping, or a container image, plus the Python version it was made
for. Backends build (and cache, by :meth:`SoftwareEnvironment.spec_hash`) the environment from
the spec. Specs live in the store (dask config ``coiled.store``) under
``software/<account>/<name>.json``, so colleagues who share a store share their environments.

Every spec is checked when it is created, before anything is built:

- exactly one of ``pip``, ``conda`` and ``container`` is given;
- pip requirements (a list, or a requirements file) parse as PEP 508 requirements;
- a conda mapping (a dict, or an ``environment.yml``) has a ``dependencies`` list;
- ``distributed``, where listed, can be 2.23.0 or newer; where not listed (pip and conda), it is
  added, pinned at the client's installed version, so the cluster speaks the client's protocol;
- a container image looks like ``[registry/]repo[:tag][@sha256:...]`` (what is inside it cannot
  be checked).

Names are ``account/name``. A bare ``name`` gets the default account: dask config
``coiled.account``, else the user's login name. Names are case-insensitive and stored lower-case.

The built-in ``examples/scaling-xgboost`` (used by Coiled's own examples) is always available; it
is not stored, and cannot be overwritten or deleted.

This module is imported by the ``coiled`` CLI and by backends, so it imports only pydantic,
packaging and yaml at module level; dask config and the store are imported when first used.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import secrets
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Literal

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from coiled_core.accounts import close_names, default_account, stored_names
from coiled_core.errors import CoiledError

__all__ = [
    "BUILTIN_ENVIRONMENTS",
    "CLUSTER_PACKAGES",
    "MIN_DISTRIBUTED_VERSION",
    "SoftwareEnvironment",
    "SoftwareEnvironmentError",
    "SoftwareEnvironmentNotFoundError",
    "client_versions",
    "create_software_environment",
    "default_account",
    "default_software_spec",
    "delete_software_environment",
    "get_software_info",
    "list_software_environments",
    "resolve_name",
    "version_mismatches",
]


class SoftwareEnvironmentError(CoiledError, ValueError):
    """A software environment spec or name is invalid, or the operation is not allowed."""


class SoftwareEnvironmentNotFoundError(CoiledError, LookupError):
    """No software environment of that name exists (stored or built in)."""


#: The oldest ``distributed`` a cluster may run.
MIN_DISTRIBUTED_VERSION = Version("2.23.0")

#: Packages whose versions must match between client and cluster (``python`` included).
#: Also in the default environment, though a version mismatch there is harmless.
DEFAULT_EXTRAS: tuple[str, ...] = ("bokeh", "pyarrow")

CLUSTER_PACKAGES: tuple[str, ...] = (
    "python",
    "dask",
    "distributed",
    "cloudpickle",
    "msgpack",
    "tornado",
    "toolz",
    "numpy",
    "pandas",
)

#: Store prefix of every spec: ``software/<account>/<name>.json``.
STORE_PREFIX = "software"

_ACCOUNT_PART = r"[a-z0-9][a-z0-9_-]*"
_NAME_PART = r"[a-z0-9][a-z0-9._-]*"
#: A full, normalised name: ``account/name`` (the same characters as ``spec.ACCOUNT_NAME_PATTERN``).
FULL_NAME_PATTERN = re.compile(rf"^{_ACCOUNT_PART}/{_NAME_PART}$")
_ACCOUNT_PATTERN = re.compile(rf"^{_ACCOUNT_PART}$")
_MAX_NAME_LENGTH = 128

#: ``created_at`` of the built-in environments (they have no creation; the epoch says so).
_BUILTIN_CREATED_AT = datetime(1970, 1, 1, tzinfo=timezone.utc)

#: The conda keys of an environment.yml that a spec keeps; ``name`` and ``prefix`` are dropped
#: (the environment's name is the spec's, and a prefix is a path on someone's machine).
_CONDA_KEYS = ("channels", "dependencies", "variables")
_CONDA_DROPPED_KEYS = ("name", "prefix")


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def _python_major_minor() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class SoftwareEnvironment(BaseModel):
    """A software environment spec, as stored and as backends receive it.

    ``kind`` names the base: ``pip`` (a virtual environment), ``conda`` (a conda environment;
    pip packages given with it are in its ``{"pip": [...]}`` dependency) or ``container`` (an
    image, optionally with ``pip`` or ``conda`` packages layered on it). ``pip`` holds normalised
    PEP 508 requirement strings; ``conda`` an environment.yml mapping (``channels``,
    ``dependencies`` with an optional ``{"pip": [...]}`` entry, ``variables``); ``container`` an
    image reference. ``python`` is the ``major.minor`` of the client that created the spec; for
    pip environments it is the Python the environment must run.

    ``post_build`` commands run (with bash, the environment's ``bin`` first on ``PATH``) after
    the packages are installed; ``gpu_enabled`` and ``arm`` say what hardware the environment is
    for (a backend that cannot provide it refuses the cluster, naming the flag);
    ``include_local_code`` puts the client's working directory on the cluster's ``PYTHONPATH``
    where the backend can (the local backend: the directory itself); ``private`` marks it as its
    creator's (listing others' environments leaves it out); ``build_nonce`` is set by
    ``force_rebuild`` so that the next cluster builds it afresh.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(description="Full name, 'account/name'.")
    kind: Literal["pip", "conda", "container"]
    pip: list[str] | None = None
    conda: dict[str, Any] | None = None
    container: str | None = None
    python: str = Field(default_factory=_python_major_minor, description="'major.minor' of the creating client.")
    post_build: list[str] | None = None
    gpu_enabled: bool = False
    arm: bool = False
    include_local_code: bool = False
    private: bool = False
    build_nonce: str | None = None
    #: The user who created it (for ``private``).
    created_by: str | None = None
    builtin: bool = False
    created_at: datetime = Field(default_factory=_now)

    @field_validator("name")
    @classmethod
    def _full_name(cls, v: str) -> str:
        if not FULL_NAME_PATTERN.fullmatch(v):
            raise ValueError(f"{v!r} is not a full software environment name ('account/name')")
        return v

    @field_validator("python")
    @classmethod
    def _major_minor(cls, v: str) -> str:
        if not re.fullmatch(r"\d+\.\d+", v):
            raise ValueError(f"python must be 'major.minor' (e.g. '3.11'), not {v!r}")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> SoftwareEnvironment:
        given = [k for k in ("pip", "conda", "container") if getattr(self, k) is not None]
        allowed = {"pip": [["pip"]], "conda": [["conda"]], "container": [["container"], ["pip", "container"], ["conda", "container"]]}
        if given not in allowed[self.kind]:
            raise ValueError(f"a {self.kind!r} environment cannot set {given} (only a container takes pip or conda packages on top)")
        return self

    @property
    def account(self) -> str:
        """The account part of :attr:`name`."""
        return self.name.split("/", 1)[0]

    @property
    def short_name(self) -> str:
        """The name without its account."""
        return self.name.split("/", 1)[1]

    def spec_hash(self) -> str:
        """sha256 hex digest of what determines the built environment.

        Covers ``kind``, ``pip``, ``conda``, ``container`` and ``python`` (not the name, dates or
        ``builtin``), as canonical JSON: sorted keys, no whitespace. Requirement order does not
        change an environment, so pip lists and conda dependencies are sorted; conda channel order
        (a priority) is kept. Equal hashes mean one build can serve both specs.
        """
        conda = None
        if self.conda is not None:
            conda = dict(self.conda)
            deps = conda.get("dependencies") or []
            strings = sorted(d for d in deps if isinstance(d, str))
            pips = sorted(p for d in deps if isinstance(d, dict) for p in d.get("pip") or [])
            conda["dependencies"] = strings + ([{"pip": pips}] if any(isinstance(d, dict) for d in deps) else [])
        canonical: dict[str, Any] = {
            "kind": self.kind,
            "pip": sorted(self.pip) if self.pip is not None else None,
            "conda": conda,
            "container": self.container,
            "python": self.python,
        }
        # Added only when set, so that the hashes (and built environments) of specs made before
        # these existed stay valid.
        for key in ("post_build", "gpu_enabled", "arm", "build_nonce"):
            value = getattr(self, key)
            if value:
                canonical[key] = value
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def packages(self) -> list[str]:
        """What the environment lists, one entry each: the image, conda specs, requirements."""
        out: list[str] = [self.container] if self.container else []
        if self.conda is not None:
            for dep in self.conda.get("dependencies") or []:
                if isinstance(dep, str):
                    out.append(dep)
                elif isinstance(dep, dict):
                    out.extend(f"pip: {p}" for p in dep.get("pip") or [])
        out.extend(self.pip or [])
        return out


# --------------------------------------------------------------------------------------------
# Names and accounts
# --------------------------------------------------------------------------------------------


def resolve_name(name: str) -> str:
    """The full, lower-case ``account/name`` of ``name``; a bare name gets :func:`default_account`.

    Raises :class:`SoftwareEnvironmentError` for anything that is not ``[account/]name`` with
    letters, digits, ``-`` and ``_`` (and ``.`` in the name part).
    """
    if not isinstance(name, str) or not name.strip():
        raise SoftwareEnvironmentError(f"{name!r} is not a valid software environment name; use 'account/name' or 'name'")
    text = name.strip().lower()
    full = text if "/" in text else f"{default_account()}/{text}"
    if not FULL_NAME_PATTERN.fullmatch(full) or len(full) > _MAX_NAME_LENGTH:
        raise SoftwareEnvironmentError(
            f"{name!r} is not a valid software environment name; use 'account/name' or 'name' with letters, "
            "digits, '-' and '_' (and '.' in the name), starting with a letter or digit "
            f"(at most {_MAX_NAME_LENGTH} characters; e.g. 'examples/scaling-xgboost')"
        )
    return full


def _key(full_name: str) -> str:
    account, short = full_name.split("/", 1)
    return f"{STORE_PREFIX}/{account}/{short}.json"


# --------------------------------------------------------------------------------------------
# Client versions
# --------------------------------------------------------------------------------------------


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def client_versions() -> dict[str, str | None]:
    """This process's versions of :data:`CLUSTER_PACKAGES` (None: not installed).

    ``python`` is ``major.minor.micro`` (``platform.python_version()``).
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in CLUSTER_PACKAGES:
        if package != "python":
            versions[package] = _installed_version(package)
    return versions


def _python_micro(version: str) -> str:
    m = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if not m:
        return version.strip()
    return ".".join(part for part in m.groups() if part is not None)


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a.strip() == b.strip()


def version_mismatches(client: Mapping[str, str | None], cluster: Mapping[str, str | None]) -> list[str]:
    """Human-readable lines for the :data:`CLUSTER_PACKAGES` whose versions differ.

    ``client`` and ``cluster`` map a package name to its version, or None where it is not
    installed. A package missing from either mapping is unknown there and is not compared.
    ``python`` is compared on ``major.minor.micro`` (so ``3.11.7`` equals ``3.11.7.final.0``);
    other versions are compared as PEP 440 versions where they parse (``1.0`` equals ``1.0.0``),
    else as text. Lines look like ``distributed: client 2026.8.0, cluster 2025.1.0``, in
    :data:`CLUSTER_PACKAGES` order.
    """
    lines = []
    for package in CLUSTER_PACKAGES:
        if package not in client or package not in cluster:
            continue
        mine, theirs = client[package], cluster[package]
        if mine is None and theirs is None:
            continue
        if mine is not None and theirs is not None:
            if package == "python":
                if _python_micro(mine) == _python_micro(theirs):
                    continue
            elif _same_version(mine, theirs):
                continue
        lines.append(f"{package}: client {mine or 'not installed'}, cluster {theirs or 'not installed'}")
    return lines


# --------------------------------------------------------------------------------------------
# The distributed >= 2.23.0 check
# --------------------------------------------------------------------------------------------


def _just_above(version: Version) -> Version:
    """A version a little above ``version`` that ``>version`` admits (not a post-release of it)."""
    return Version(".".join(str(p) for p in (*version.release, 0, 0, 1)))


def admits_supported_distributed(specifier: SpecifierSet) -> bool:
    """Whether ``specifier`` admits some ``distributed`` >= :data:`MIN_DISTRIBUTED_VERSION`.

    Method: a PEP 440 specifier set admits an interval of versions with finitely many holes
    (``!=``). If its intersection with ``[2.23.0, inf)`` is not empty, one of these witnesses lies
    in it: 2.23.0 itself; every version the specifier names that is >= 2.23.0 (an inclusive lower
    bound, an ``==``/``~=``/``==X.*`` version) and a version just above each (an exclusive lower
    bound, or one punched out by ``!=``); the client's installed ``distributed``; and a
    far-future version (no upper bound). The specifier is tested against each, pre-releases
    allowed. So ``>=1.0`` and ``~=2.0`` pass; ``<2.0``, ``==2.20.0``, ``<=2.22`` and ``~=2.22.0``
    fail.
    """
    candidates: set[Version] = {MIN_DISTRIBUTED_VERSION, _just_above(MIN_DISTRIBUTED_VERSION), Version("99999")}
    client = _installed_version("distributed")
    for text in [client] + [s.version for s in specifier]:
        if not text:
            continue
        text = text.removesuffix(".*")
        try:
            version = Version(text)
        except InvalidVersion:
            continue
        if version >= MIN_DISTRIBUTED_VERSION or version.release >= MIN_DISTRIBUTED_VERSION.release:
            candidates.update({version, _just_above(version), _just_above(_just_above(version))})
    return any(specifier.contains(v, prereleases=True) for v in candidates)


def _too_old(source: str) -> SoftwareEnvironmentError:
    return SoftwareEnvironmentError(
        f"{source}: clusters need distributed >= {MIN_DISTRIBUTED_VERSION}, which this requirement rules out; "
        "relax it, or leave distributed out to get the client's version"
    )


# --------------------------------------------------------------------------------------------
# pip
# --------------------------------------------------------------------------------------------


def _parse_requirement(text: str, where: str) -> Requirement:
    if text.startswith("-"):
        raise SoftwareEnvironmentError(
            f"{where}: {text!r}: pip options and nested files (-r, -e, -c, --index-url, ...) are not supported; "
            "list requirements only"
        )
    try:
        return Requirement(text)
    except InvalidRequirement as e:
        raise SoftwareEnvironmentError(f"{where}: {text!r} is not a valid requirement: {e}") from None


def _read_requirements_file(path: str) -> list[tuple[str, str]]:
    """(requirement text, 'file line N') pairs of a requirements file: blanks and comments skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            raw_lines = f.read().splitlines()
    except OSError as e:
        raise SoftwareEnvironmentError(f"pip: cannot read requirements file {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SoftwareEnvironmentError(f"pip: requirements file {path!r} is not UTF-8 text") from None
    out: list[tuple[str, str]] = []
    pending, start = "", 0
    for number, line in enumerate(raw_lines, start=1):
        if not pending:
            start = number
        # pip's comment rule: '#' at the start of a line or after whitespace.
        line = re.sub(r"(^|\s)#.*$", "", line)
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        text = (pending + line).strip()
        pending = ""
        if text:
            out.append((text, f"{os.path.basename(path)} line {start}"))
    if pending.strip():
        out.append((pending.strip(), f"{os.path.basename(path)} line {start}"))
    return out


def _pip_requirements(pip: Any, add_distributed: bool = True) -> list[str]:
    """Normalised requirement strings, with ``distributed`` checked or (``add_distributed``) added."""
    if isinstance(pip, (str, os.PathLike)):
        path = os.fspath(pip)
        if not os.path.isfile(path):
            raise SoftwareEnvironmentError(
                f"pip: {path!r} is not a file; give a list of requirements or the path of a requirements file"
            )
        entries = _read_requirements_file(path)
        if not entries:
            raise SoftwareEnvironmentError(f"pip: requirements file {path!r} lists no requirements")
    elif isinstance(pip, (list, tuple)):
        if not pip:
            raise SoftwareEnvironmentError("pip: no requirements given")
        entries = []
        for i, item in enumerate(pip):
            if not isinstance(item, str) or not item.strip():
                raise SoftwareEnvironmentError(f"pip: item {i} ({item!r}) is not a requirement string")
            entries.append((item.strip(), f"pip item {i}"))
    else:
        raise SoftwareEnvironmentError(
            f"pip: expected a list of requirements or the path of a requirements file, not {type(pip).__name__}"
        )
    requirements = [(_parse_requirement(text, where), where) for text, where in entries]
    _check_or_add_distributed_pip(requirements)
    out = [str(r) for r, _ in requirements]
    if add_distributed and not any(canonicalize_name(r.name) == "distributed" for r, _ in requirements):
        client = _installed_version("distributed")
        out.append(f"distributed=={client}" if client else f"distributed>={MIN_DISTRIBUTED_VERSION}")
    return out


def _check_or_add_distributed_pip(requirements: list[tuple[Requirement, str]]) -> None:
    for requirement, where in requirements:
        is_distributed = canonicalize_name(requirement.name) == "distributed" and requirement.url is None
        if is_distributed and not admits_supported_distributed(requirement.specifier):
            raise _too_old(f"{where}: {str(requirement)!r}")


# --------------------------------------------------------------------------------------------
# conda
# --------------------------------------------------------------------------------------------

_CONDA_NAME = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(.*)$")
_CONDA_TERM = re.compile(r"^(==|!=|>=|<=|~=|>|<|=)?\s*(.*)$")


def _conda_term_to_pep440(term: str) -> str | None:
    """One conda version constraint (``>=2.23``, ``2.30*``, ``=2.30``) as a PEP 440 specifier."""
    term = term.strip()
    if term in ("", "*"):
        return None
    op, version = _CONDA_TERM.match(term).groups()  # type: ignore[union-attr]
    version = version.strip()
    wildcard = version.endswith("*")
    base = version.rstrip("*").rstrip(".")
    if not base:
        return None
    if op in (None, "=", "==") and (wildcard or op == "="):
        return f"=={base}.*"
    if op is None:
        return f"=={base}"
    if op == "!=" and wildcard:
        return f"!={base}.*"
    return f"{op}{base}"


def _conda_version_alternatives(version: str, source: str) -> list[SpecifierSet]:
    """A conda version spec (``,`` is and, ``|`` is or) as PEP 440 specifier sets, one per alternative."""
    alternatives = []
    for alternative in version.replace("(", "").replace(")", "").split("|"):
        terms = [_conda_term_to_pep440(t) for t in alternative.split(",")]
        try:
            alternatives.append(SpecifierSet(",".join(t for t in terms if t)))
        except InvalidSpecifier:
            raise SoftwareEnvironmentError(f"{source}: cannot read the version constraint {version!r}") from None
    return alternatives


def parse_conda_match_spec(spec: str) -> tuple[str, list[SpecifierSet]]:
    """Name and version alternatives of a conda match spec, e.g. ``conda-forge::distributed>=2.23``.

    Understands ``name``, ``name=1.2`` (``1.2.*``), ``name=1.2.3=build`` (exact),
    ``name==1.2.3``, ``name>=1.2,<2|==0.9``, ``name 1.2.3 build``, ``name 1.2*`` and
    ``name[version='>=1.2']``, each with an optional ``channel::`` prefix. The alternatives are
    PEP 440 specifier sets (an empty set: any version).
    """
    source = f"conda dependency {spec!r}"
    text = spec.strip()
    if "::" in text:
        text = text.rsplit("::", 1)[1]
    bracket_version = None
    bracket = re.search(r"\[(.*)\]\s*$", text)
    if bracket:
        text = text[: bracket.start()]
        m = re.search(r"version\s*=\s*(?:'([^']*)'|\"([^\"]*)\"|([^,\s]+))", bracket.group(1))
        if m:
            bracket_version = next(g for g in m.groups() if g is not None)
    m = _CONDA_NAME.match(text.strip())
    if not m:
        raise SoftwareEnvironmentError(f"{source} is not a conda package spec")
    name, rest = m.group(1), m.group(2).strip()
    if bracket_version is not None:
        version = bracket_version
    elif not rest:
        version = ""
    elif rest.startswith("=") and not rest.startswith("=="):
        # name=1.2 means 1.2.*; name=1.2.3=build pins 1.2.3 exactly.
        parts = rest[1:].split("=")
        version = f"={parts[0]}" if len(parts) == 1 else parts[0]
    else:
        # An operator form ('>= 2.23, <2024'), or 'version [build]' separated by spaces.
        rest = re.sub(r"\s*([<>=!~]=?|,|\|)\s*", r"\1", rest)
        version = rest.split()[0]
    return name, _conda_version_alternatives(version, source)


def _load_conda(conda: Any) -> tuple[dict[str, Any], str]:
    if isinstance(conda, (str, os.PathLike)):
        path = os.fspath(conda)
        if not os.path.isfile(path):
            raise SoftwareEnvironmentError(f"conda: {path!r} is not a file; give a mapping or the path of an environment.yml")
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except OSError as e:
            raise SoftwareEnvironmentError(f"conda: cannot read {path!r}: {e.strerror or e}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise SoftwareEnvironmentError(f"conda: {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        source = os.path.basename(path)
        if not isinstance(loaded, dict):
            raise SoftwareEnvironmentError(f"conda: {source} must be a mapping with a 'dependencies' list")
        return loaded, source
    if isinstance(conda, Mapping):
        return dict(conda), "conda"
    raise SoftwareEnvironmentError(
        f"conda: expected an environment.yml mapping or its path, not {type(conda).__name__}"
    )


def _conda_spec(conda: Any) -> dict[str, Any]:
    """A normalised environment.yml mapping, with ``distributed`` checked or added."""
    loaded, source = _load_conda(conda)
    unknown = sorted(str(k) for k in loaded if k not in _CONDA_KEYS and k not in _CONDA_DROPPED_KEYS)
    if unknown:
        raise SoftwareEnvironmentError(
            f"{source}: unsupported key(s) {', '.join(map(repr, unknown))} (valid: {', '.join(_CONDA_KEYS)})"
        )
    out: dict[str, Any] = {}
    channels = loaded.get("channels")
    if channels is not None:
        if not isinstance(channels, list) or not all(isinstance(c, str) and c.strip() for c in channels):
            raise SoftwareEnvironmentError(f"{source}: 'channels' must be a list of channel names")
        out["channels"] = [c.strip() for c in channels]
    variables = loaded.get("variables")
    if variables is not None:
        if not isinstance(variables, dict):
            raise SoftwareEnvironmentError(f"{source}: 'variables' must be a mapping of names to values")
        out["variables"] = {str(k): str(v) for k, v in variables.items()}
    dependencies = loaded.get("dependencies")
    if not isinstance(dependencies, list) or not dependencies:
        raise SoftwareEnvironmentError(f"{source}: needs a 'dependencies' list (e.g. dependencies: [numpy, pandas])")

    strings: list[str] = []
    pip_lists: list[list[str]] = []
    has_distributed = False
    for i, dep in enumerate(dependencies):
        if isinstance(dep, str) and dep.strip():
            name, alternatives = parse_conda_match_spec(dep)
            if name.lower() == "distributed":
                has_distributed = True
                if not any(admits_supported_distributed(a) for a in alternatives):
                    raise _too_old(f"{source}: dependency {dep.strip()!r}")
            strings.append(dep.strip())
        elif isinstance(dep, dict) and set(dep) == {"pip"} and isinstance(dep["pip"], list):
            requirements = []
            for j, item in enumerate(dep["pip"]):
                where = f"{source}: pip item {j}"
                if not isinstance(item, str) or not item.strip():
                    raise SoftwareEnvironmentError(f"{where} ({item!r}) is not a requirement string")
                requirements.append((_parse_requirement(item.strip(), where), where))
            _check_or_add_distributed_pip(requirements)
            has_distributed = has_distributed or any(canonicalize_name(r.name) == "distributed" for r, _ in requirements)
            pip_lists.append([str(r) for r, _ in requirements])
        else:
            raise SoftwareEnvironmentError(
                f"{source}: dependency {i} ({dep!r}) must be a conda package spec or a {{'pip': [...]}} list"
            )
    if not has_distributed:
        client = _installed_version("distributed")
        strings.append(f"distributed={client}" if client else f"distributed>={MIN_DISTRIBUTED_VERSION}")
    pip_entries: list[dict[str, list[str]]] = []
    if pip_lists:
        pip_entries = [{"pip": [p for lst in pip_lists for p in lst]}]
    out["dependencies"] = strings + pip_entries
    return out


# --------------------------------------------------------------------------------------------
# container
# --------------------------------------------------------------------------------------------

_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")


def _container_image(image: Any) -> str:
    """``image`` if it reads as ``[registry[:port]/]repo[:tag][@digest]``, else an error."""
    if not isinstance(image, str) or not image.strip():
        raise SoftwareEnvironmentError(f"container: expected an image reference such as 'daskdev/dask:latest', not {image!r}")
    ref = image.strip()
    bad = SoftwareEnvironmentError(
        f"container: {image!r} is not an image reference; use [registry/]repository[:tag][@sha256:digest], "
        "e.g. 'ghcr.io/dask/dask:2024.1.0'"
    )
    if re.search(r"\s", ref) or len(ref) > 512:
        raise bad
    rest, _, digest = ref.partition("@")
    if "@" in ref and not _DIGEST.fullmatch(digest):
        raise bad
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise bad
    parts = rest.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _DOMAIN.fullmatch(first):
            raise bad
        parts = parts[1:]
    if not parts or not all(_PATH_COMPONENT.fullmatch(p) for p in parts) or len("/".join(parts)) > 255:
        raise bad
    return ref


# --------------------------------------------------------------------------------------------
# Built-ins
# --------------------------------------------------------------------------------------------


def _scaling_xgboost() -> SoftwareEnvironment:
    dask_version = _installed_version("dask")
    distributed_version = _installed_version("distributed")
    return SoftwareEnvironment(
        name="examples/scaling-xgboost",
        kind="pip",
        pip=[
            # xgboost's small CPU-only wheel (no CUDA libraries).
            "xgboost-cpu",
            f"dask[dataframe]=={dask_version}" if dask_version else "dask[dataframe]",
            f"distributed=={distributed_version}" if distributed_version else f"distributed>={MIN_DISTRIBUTED_VERSION}",
            "numpy",
            "pandas",
        ],
        python=_python_major_minor(),
        builtin=True,
        created_at=_BUILTIN_CREATED_AT,
    )


#: Built-in environments by full name: made on demand (they pin the client's versions).
BUILTIN_ENVIRONMENTS = {"examples/scaling-xgboost": _scaling_xgboost}


def _builtin(full_name: str) -> SoftwareEnvironment | None:
    factory = BUILTIN_ENVIRONMENTS.get(full_name)
    return factory() if factory else None


def default_software_spec() -> SoftwareEnvironment:
    """The environment a remote backend runs when ``software`` is not given: the client's own.

    A pip spec named ``coiled/default`` pinning (``==``) the client's installed dask,
    distributed, cloudpickle, msgpack, tornado, toolz, numpy and pandas, plus what the
    reference's default environment promises besides (bokeh for the dashboard, pyarrow for
    dask.dataframe); any not installed are left out. For the client's ``major.minor`` Python,
    so client and cluster match. Not stored.
    """
    pins = []
    for package in (*CLUSTER_PACKAGES, *DEFAULT_EXTRAS):
        if package == "python":
            continue
        version = _installed_version(package)
        if version is not None:
            pins.append(f"{package}=={version}")
    return SoftwareEnvironment(
        name="coiled/default",
        kind="pip",
        pip=pins,
        python=_python_major_minor(),
        builtin=True,
        created_at=_BUILTIN_CREATED_AT,
    )


# --------------------------------------------------------------------------------------------
# The public operations
# --------------------------------------------------------------------------------------------


def _store():
    from coiled_core.store import Store

    return Store()


def _load(store, full_name: str) -> SoftwareEnvironment | None:
    """The stored spec of ``full_name``, checked again as on create (None if there is none).

    A shared store is written by others: a spec is not trusted for having been checked when it
    was made. Its ``container``, which a backend hands to a boot script, must still read as an
    image reference.
    """
    data = store.read(_key(full_name))
    if data is None:
        return None
    try:
        env = SoftwareEnvironment.model_validate_json(data)
    except ValueError as e:
        raise SoftwareEnvironmentError(
            f"the stored spec of software environment {full_name!r} is unreadable ({e.__class__.__name__}); "
            "delete it and create it again"
        ) from None
    if env.container is not None:
        try:
            valid = _container_image(env.container) == env.container
        except SoftwareEnvironmentError as e:
            raise SoftwareEnvironmentError(f"the stored spec of software environment {full_name!r} is invalid: {e}") from None
        if not valid:
            raise SoftwareEnvironmentError(
                f"the stored spec of software environment {full_name!r} is invalid: container: {env.container!r} "
                "has surrounding whitespace"
            )
    return env


def _not_found(name: str, full_name: str, store) -> SoftwareEnvironmentNotFoundError:
    known = sorted(set(stored_names(store, STORE_PREFIX)) | set(BUILTIN_ENVIRONMENTS))
    suggestions = close_names(full_name, known)
    hint = f"; did you mean {' or '.join(map(repr, suggestions))}?" if suggestions else ""
    shown = name if name.strip().lower() == full_name else f"{name} ({full_name})"
    return SoftwareEnvironmentNotFoundError(f"no software environment named {shown!r}{hint}")


def _conda_input(conda: Any) -> Any:
    """Coiled's plain list of conda packages is an environment.yml with conda-forge."""
    if isinstance(conda, (list, tuple)):
        return {"channels": ["conda-forge"], "dependencies": list(conda)}
    return conda


def _with_pip(conda: dict[str, Any], pip: list[str]) -> dict[str, Any]:
    """``conda`` with ``pip`` requirements added to its ``{"pip": [...]}`` dependency."""
    dependencies = list(conda.get("dependencies") or [])
    entries = [d for d in dependencies if isinstance(d, dict)]
    merged = [p for d in entries for p in d.get("pip") or []]
    names = {canonicalize_name(Requirement(p).name) for p in pip}
    merged = [p for p in merged if canonicalize_name(Requirement(p).name) not in names] + list(pip)
    return {**conda, "dependencies": [d for d in dependencies if not isinstance(d, dict)] + [{"pip": merged}]}


def _post_build(post_build: Any) -> list[str] | None:
    """Commands (a list, one shell line each) or the path of a script, as a list of lines."""
    if post_build is None:
        return None
    if isinstance(post_build, (str, os.PathLike)) and os.path.isfile(os.fspath(post_build)):
        with open(os.fspath(post_build), encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f]
        return [line for line in lines if line.strip() and not line.startswith("#!")] or None
    if isinstance(post_build, str):
        raise SoftwareEnvironmentError(f"post_build: {post_build!r} is not a file; give a list of commands or the path of a script")
    if not isinstance(post_build, (list, tuple)) or not all(isinstance(c, str) and c.strip() for c in post_build):
        raise SoftwareEnvironmentError(f"post_build: expected a list of shell commands or the path of a script, not {post_build!r}")
    return [c.strip() for c in post_build] or None


def create_software_environment(
    name: str | None = None,
    pip: list[str] | str | os.PathLike | None = None,
    conda: Mapping[str, Any] | list[str] | str | os.PathLike | None = None,
    container: str | None = None,
    *,
    post_build: list[str] | str | os.PathLike | None = None,
    gpu_enabled: bool = False,
    arm: bool = False,
    architecture: str | None = None,
    include_local_code: bool = False,
    private: bool = False,
    workspace: str | None = None,
    account: str | None = None,
    force_rebuild: bool = False,
    **ignored: Any,
) -> SoftwareEnvironment:
    """Check a software environment spec and store it under ``name``; return the stored spec.

    Give at least one of:

    - ``pip``: a list of requirement strings, or the path of a requirements file (blank lines and
      ``#`` comments are skipped; ``-r``, ``-e`` and other option lines are refused);
    - ``conda``: an environment.yml mapping (``channels``, ``dependencies`` with an optional
      ``{"pip": [...]}`` entry, ``variables``), its path, or a plain list of conda packages (from
      conda-forge); with ``pip`` too, the pip packages go into the conda environment;
    - ``container``: an image reference, ``[registry/]repository[:tag][@sha256:...]``; with
      ``pip`` or ``conda``, those packages are installed on top of the image.

    ``post_build``: shell commands (or a script's path) run after the packages are installed.
    ``gpu_enabled``, ``arm`` (or ``architecture="aarch64"``/``"arm64"``): the hardware the
    environment is for. ``include_local_code``: the client's working directory goes on the
    cluster's ``PYTHONPATH`` where the backend can. ``private``: only its creator lists it.
    ``workspace``/``account``: the account of a bare ``name``. ``force_rebuild``: the next
    cluster builds it afresh rather than reusing a build of the same spec.

    A listed ``distributed`` must admit a version >= 2.23.0; an unlisted one is added, pinned at
    the client's version (``distributed==X`` for pip, ``distributed=X`` for conda). A bare
    ``name`` gets the default account (:func:`default_account`). An existing environment of that
    name is replaced; built-in ones cannot be. Other keywords of Coiled's client (``log_output``,
    ``interactive``, ``region_name``, ``use_uv_installer``, ...) are accepted and have no effect
    here. Raises :class:`SoftwareEnvironmentError`.
    """
    if name is None:
        raise SoftwareEnvironmentError("name: a software environment needs a name (e.g. name='my-env')")
    unknown = sorted(set(ignored) - set(_ACCEPTED_ENV_KEYWORDS))
    if unknown:
        import difflib

        valid = ["name", "pip", "conda", "container", "post_build", "gpu_enabled", "arm", "architecture",
                 "include_local_code", "private", "workspace", "account", "force_rebuild", *_ACCEPTED_ENV_KEYWORDS]
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SoftwareEnvironmentError(f"{unknown[0]!r} is not a create_software_environment parameter{hint}")
    owner = workspace or account
    if workspace and account and workspace != account:
        raise SoftwareEnvironmentError(f"account={account!r} and workspace={workspace!r} disagree; give only workspace")
    if owner and isinstance(name, str) and "/" not in name:
        name = f"{owner}/{name}"
    full_name = resolve_name(name)
    if architecture is not None:
        if architecture not in ("x86_64", "aarch64", "arm64"):
            raise SoftwareEnvironmentError(f"architecture: {architecture!r} is not one of 'x86_64', 'aarch64'")
        arm = arm or architecture in ("aarch64", "arm64")
    for flag, value in (("gpu_enabled", gpu_enabled), ("arm", arm), ("include_local_code", include_local_code),
                        ("private", private), ("force_rebuild", force_rebuild)):
        if not isinstance(value, bool):
            raise SoftwareEnvironmentError(f"{flag}: must be True or False, not {value!r}")
    if pip is None and conda is None and container is None:
        raise SoftwareEnvironmentError(f"software environment {full_name!r}: give pip, conda or container (got none)")
    if full_name in BUILTIN_ENVIRONMENTS:
        raise SoftwareEnvironmentError(f"{full_name!r} is a built-in software environment and cannot be overwritten; choose another name")
    # On top of conda or an image, distributed comes from there (the conda spec adds it).
    requirements = _pip_requirements(pip, add_distributed=conda is None and container is None) if pip is not None else None
    conda_spec = _conda_spec(_conda_input(conda)) if conda is not None else None
    if conda_spec is not None and requirements is not None:
        conda_spec, requirements = _with_pip(conda_spec, requirements), None
    extra = {
        "post_build": _post_build(post_build),
        "gpu_enabled": gpu_enabled,
        "arm": arm,
        "include_local_code": include_local_code,
        "private": private,
        "build_nonce": secrets.token_hex(8) if force_rebuild else None,
        "created_by": _current_user(),
    }
    if container is not None:
        env = SoftwareEnvironment(
            name=full_name, kind="container", container=_container_image(container), pip=requirements, conda=conda_spec, **extra
        )
    elif conda_spec is not None:
        env = SoftwareEnvironment(name=full_name, kind="conda", conda=conda_spec, **extra)
    else:
        env = SoftwareEnvironment(name=full_name, kind="pip", pip=requirements, **extra)
    _store().write(_key(full_name), env.model_dump_json(indent=2).encode())
    return env


def _current_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


#: Keywords of Coiled's ``create_software_environment`` accepted without effect here.
_ACCEPTED_ENV_KEYWORDS = (
    "log_output",
    "interactive",
    "conda_env_name",
    "backend_options",
    "use_entrypoint",
    "region_name",
    "ignore_local_packages",
    "use_uv_installer",
)


def get_software_info(name: str) -> SoftwareEnvironment:
    """The spec of software environment ``name`` (built in, or from the store).

    Raises :class:`SoftwareEnvironmentNotFoundError`, suggesting close matches, when there is none.
    """
    full_name = resolve_name(name)
    builtin = _builtin(full_name)
    if builtin is not None:
        return builtin
    store = _store()
    env = _load(store, full_name)
    if env is None:
        raise _not_found(name, full_name, store)
    return env


def list_software_environments(account: str | None = None) -> list[SoftwareEnvironment]:
    """Every software environment, built-ins included, sorted by name.

    ``account`` limits the list to one account (``None``: every account in the store, since a
    shared store is shared by a team). Stored specs that cannot be read are skipped, and so are
    other users' private ones.
    """
    if account is not None:
        account = account.strip().lower()
        if not _ACCOUNT_PATTERN.fullmatch(account):
            raise SoftwareEnvironmentError(f"{account!r} is not a valid account name")
    store = _store()
    envs: dict[str, SoftwareEnvironment] = {}
    for full_name in stored_names(store, STORE_PREFIX):
        if account is not None and full_name.split("/", 1)[0] != account:
            continue
        try:
            env = _load(store, full_name)
        except SoftwareEnvironmentError:
            continue
        if env is not None and not (env.private and env.created_by not in (None, _current_user())):
            envs[full_name] = env  # another user's private environment is left out
    for full_name in BUILTIN_ENVIRONMENTS:
        if account is None or full_name.split("/", 1)[0] == account:
            envs[full_name] = _builtin(full_name)  # type: ignore[assignment]
    return [envs[k] for k in sorted(envs)]


def delete_software_environment(name: str) -> None:
    """Delete software environment ``name`` from the store.

    Raises :class:`SoftwareEnvironmentError` for a built-in environment and
    :class:`SoftwareEnvironmentNotFoundError` when there is no such environment.
    """
    full_name = resolve_name(name)
    if full_name in BUILTIN_ENVIRONMENTS:
        raise SoftwareEnvironmentError(f"{full_name!r} is a built-in software environment and cannot be deleted")
    store = _store()
    key = _key(full_name)
    if not store.exists(key):
        raise _not_found(name, full_name, store)
    store.delete(key)
