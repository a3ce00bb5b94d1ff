"""The boot script of a VM node, the same on every VM backend.

A VM backend starts each node with a shell script as its user data or startup
script. :func:`render_boot_script` writes it; the backend only says how a node reaches its
artifact store (:class:`NodeStore`), which objects to run (:class:`StoredFile`), how a node learns
its own id and how it powers off. The script:

1. finds a Python of the environment's ``major.minor`` (the machine's own if it matches, else one
   that uv installs) and uv (on the machine, else ``pip install uv``; without uv everything is
   built with pip, and the log says so);
2. makes a small *boot tools* venv holding what the backend's store program imports (its SDK),
   ``zstandard`` and ``pluggy``;
3. fetches the agent bundle through the store program and runs it only if its sha256 is the one
   written in the script (else it powers off);
4. gets the software environment (:mod:`coiled_core.node.envpack`): from the machine's cache, as
   a pack from the artifact store, or built with uv (then packed and uploaded for every later
   node), under an atomic claim so that one node builds while the others wait; or, for a
   ``container`` environment, runs the image with docker (pip packages and ``post_build``
   layered on it first);
5. unpacks the client's local code (``include_local_code``) and runs the node agent
   (``python -m coiled_core.node node.json``) in the environment;
6. powers the machine off when the agent ends (the offline simulators, ``COILED_OFFLINE``, turn
   the script's exit into the machine's end instead).

Every step's duration goes to ``node.log`` ("coiled: boot: ..."), and so does the path the
environment took (cache hit, fetched, built, waited). A step that fails before the agent runs
says why in the log, uploads the log to ``<log_key><node id>.log`` (the client reads it from
there: the agent, which ships logs later, never ran) and powers off.

Every value is put into the script once, shell-quoted, as a variable at its top, and the template
is rendered in one pass: text inside a value (a cluster name, a requirement, an image, a
post_build command) is never expanded by the shell nor taken for another placeholder. The script
stays well under the smallest user-data limit of the clouds, 16 KB (:data:`USER_DATA_LIMIT`).

**The store program** (:attr:`NodeStore.program`) is Python source of the backend's, run with
the boot tools' Python as ``store.py CMD ...``, with :attr:`NodeStore.settings` as JSON in the
``COILED_STORE`` environment variable:

- ``get KEY TARGET``: download; exit 0, or 2 if there is no such object;
- ``put PATH KEY``: upload, replacing;
- ``create PATH KEY``: upload only if KEY does not exist, atomically (the object store's
  conditional write); exit 0 if created, 3 if KEY existed;
- any other failure: a non-zero exit with a message on stderr.

It runs with the node's own identity (instance role, service account): no key of the client's is
in the script.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

#: The smallest limit on user data among the clouds (16 KB); some allow more.
USER_DATA_LIMIT = 16 * 1024
#: ``post_build`` scripts up to this size go inline; longer ones are shipped as a
#: :class:`StoredFile` (see :func:`post_build_script`).
POST_BUILD_INLINE_BYTES = 4096
#: What the boot tools venv holds besides the store program's own requirements: the pack
#: format, and what ``coiled_core/__init__`` imports when the envpack step runs from the bundle.
BOOT_TOOLS_REQUIREMENTS = ("zstandard", "pluggy")


@dataclass(frozen=True)
class StoredFile:
    """An object in the backend's artifact store that a node fetches and checks before use."""

    #: The object's key (name) in the store.
    key: str
    #: Hex sha256 of its content, as the client uploaded it; the node refuses anything else.
    sha256: str


@dataclass(frozen=True)
class NodeStore:
    """How a backend's nodes reach its artifact store, before any environment exists."""

    #: Python source of the backend's store program (see the module documentation).
    program: str
    #: Packages the program imports beyond the standard library (the cloud's SDK).
    requirements: tuple[str, ...] = ()
    #: Given to the program as JSON in ``COILED_STORE`` (bucket, region, endpoint...).
    settings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BootSoftware:
    """The software environment as a boot script needs it (see :func:`boot_software`)."""

    #: The environment's name, for messages.
    name: str
    #: Its spec hash: with the Python version and the machine's architecture, the key of its pack.
    env_hash: str
    #: ``major.minor`` of the Python the environment runs.
    python: str
    #: pip requirements of the environment (the agent's own and the node add-on's included).
    requirements: tuple[str, ...] = ()
    #: The post_build script (:func:`post_build_script`), inline or as a stored file.
    post_build: str | StoredFile | None = None
    #: A container image to run instead of building a venv.
    container: str | None = None
    #: pip requirements installed in the container, on top of the image.
    image_requirements: tuple[str, ...] = ()
    #: The packs the client pinned, by environment key (``{"object", "sha256", "prefix"}``): a
    #: node fetches a pack only if it is pinned here, and checks its sha256 (see
    #: :func:`coiled_core.node.envpack.pinned_software`).
    pins: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The cluster's build: where its nodes share a pack they build when none is pinned (empty:
    #: each node builds its own and shares nothing).
    build_id: str = ""


def post_build_script(lines: list[str]) -> str:
    """The script a node runs for ``post_build`` (with bash): the lines, stopping at the first
    that fails, as the local backend runs them."""
    return "set -e\n" + "\n".join(lines) + "\n"


def boot_software(software: Any, node_requirements: list[str] | tuple[str, ...] = ()) -> BootSoftware:
    """A :class:`BootSoftware` from a ``SoftwareEnvironment`` (see
    :func:`coiled_core.backend.software_environment`) and what the node needs besides its
    packages (:func:`coiled_core.backend.node_requirements`). ``post_build`` is inline; a backend
    ships it as a :class:`StoredFile` instead when it is longer than :data:`POST_BUILD_INLINE_BYTES`
    (``dataclasses.replace(boot, post_build=stored)``)."""
    container = software.container if software.kind == "container" else None
    pip = tuple(software.pip or ())
    requirements = () if container else (*pip, *node_requirements)
    # The pack holds the node's own requirements too (each backend's SDK): they are part of its
    # key, or a pack built for one backend's nodes would be taken for another's.
    env_hash = hashlib.sha256(json.dumps([software.spec_hash(), list(requirements)]).encode()).hexdigest()[:24]
    return BootSoftware(
        name=software.name,
        env_hash=env_hash,
        python=software.python,
        requirements=requirements,
        post_build=post_build_script(software.post_build) if software.post_build else None,
        container=container,
        image_requirements=pip if container else (),
    )


_TEMPLATE = r"""#!/bin/bash
# A Dask node of a coiled cluster: Python, software environment, node agent, power-off.
set -u
CLUSTER=__CLUSTER__
SOFTWARE=__SOFTWARE__
CONTAINER=__CONTAINER__
PYTHON_VERSION=__PYTHON__
IMAGE_REQUIREMENTS=(__IMAGE_REQUIREMENTS__)
TOOLS_REQUIREMENTS=(__TOOLS_REQUIREMENTS__)
POST_BUILD=__POST_BUILD__
POST_BUILD_KEY=__POST_BUILD_KEY__
POST_BUILD_SHA256=__POST_BUILD_SHA256__
CODE_KEY=__CODE_KEY__
CODE_SHA256=__CODE_SHA256__
BUNDLE_KEY=__BUNDLE_KEY__
BUNDLE_SHA256=__BUNDLE_SHA256__
LOG_KEY=__LOG_KEY__
export COILED_STORE=__STORE_SETTINGS__
ROOT="${COILED_NODE_ROOT:-/opt/coiled}"
mkdir -p "$ROOT" && cd "$ROOT" || exit 1
exec >>"$ROOT/node.log" 2>&1
BOOTED=$(date +%s.%N)
STEP=$BOOTED
TOOLS=""
echo "coiled: booting node of cluster $CLUSTER (boot clock $BOOTED)"

took() {  # what: the time since the last step, and since boot
  local now
  now=$(date +%s.%N)
  awk -v w="$1" -v s="$STEP" -v b="$BOOTED" -v n="$now" 'BEGIN { printf "coiled: boot: %s in %.1f s (%.1f s since boot)\n", w, n - s, n - b }'
  STEP=$now
}

node_id() {
__NODE_ID_COMMAND__
}
if [ -z "${COILED_INSTANCE_ID:-}" ]; then
  COILED_INSTANCE_ID=$(node_id 2>/dev/null || true)
fi
export COILED_INSTANCE_ID="${COILED_INSTANCE_ID:-$(hostname)}"

power_off() {
  # Offline simulators turn the script's exit into the machine's end.
  if [ -z "${COILED_OFFLINE:-}" ]; then
__POWER_OFF_COMMAND__
  fi
  exit "${1:-0}"
}

store() { "$TOOLS" "$ROOT/store.py" "$@"; }

fail() {  # a step failed: say which, ship the log, power off
  echo "coiled: $1; powering off"
  if [ -n "$LOG_KEY" ] && [ -n "$TOOLS" ]; then
    store put "$ROOT/node.log" "$LOG_KEY$COILED_INSTANCE_ID.log" || echo "coiled: uploading this log failed"
  fi
  power_off 1
}

cat >"$ROOT/node.json" <<'COILED_NODE_JSON'
__NODE_JSON__
COILED_NODE_JSON
cat >"$ROOT/environment.json" <<'COILED_ENVIRONMENT_JSON'
__ENVIRONMENT_JSON__
COILED_ENVIRONMENT_JSON
cat >"$ROOT/store.py" <<'COILED_STORE_PROGRAM'
__STORE_PROGRAM__
COILED_STORE_PROGRAM

# 1. Python and uv.
PY=""
for candidate in "python$PYTHON_VERSION" python3; do
  command -v "$candidate" >/dev/null || continue
  # The interpreter itself, not a wrapper (a pyenv shim) nor a venv's link to it.
  found=$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2], getattr(sys, "_base_executable", sys.executable))' 2>/dev/null) || continue
  if [ "${found%% *}" = "$PYTHON_VERSION" ] && [ -x "${found#* }" ]; then
    PY=${found#* }
    break
  fi
done
UV="${COILED_UV:-$(command -v uv || true)}"
if [ -z "$UV" ]; then
  HOST_PY="${PY:-$(command -v python3 || true)}"
  if [ -n "$HOST_PY" ] && "$HOST_PY" -m pip install --quiet --disable-pip-version-check --target "$ROOT/uv-install" uv; then
    UV="$ROOT/uv-install/bin/uv"
  else
    echo "coiled: uv could not be installed: building with pip instead"
  fi
fi
if [ -z "$PY" ] && [ -z "$CONTAINER" ]; then
  [ -n "$UV" ] || fail "this machine has no Python $PYTHON_VERSION, and no uv to install one"
  "$UV" python install "$PYTHON_VERSION" || fail "installing Python $PYTHON_VERSION with uv failed"
  PY=$("$UV" python find "$PYTHON_VERSION") || fail "uv installed Python $PYTHON_VERSION but cannot find it"
fi
TOOLS_PY="${PY:-$(command -v python3 || true)}"
[ -n "$TOOLS_PY" ] || fail "this machine has no python3 to fetch the node's files with"
took "python ${PY:-none} and uv ${UV:-none}"

# 2. The boot tools: the store program's SDK, zstandard, pluggy; kept in the machine's cache.
CACHE="${COILED_ENV_CACHE:-$ROOT/envs}"
mkdir -p "$CACHE/bundles" || fail "cannot create $CACHE"
TOOLS_DIR="$CACHE/boot-tools-$(printf '%s\n' "$TOOLS_PY" "${TOOLS_REQUIREMENTS[@]}" | sha256sum | cut -c1-16)"
(
  flock 9
  [ -e "$TOOLS_DIR/.complete" ] && exit 0
  rm -rf "$TOOLS_DIR"
  if [ -n "$UV" ]; then
    "$UV" venv --quiet --python "$TOOLS_PY" "$TOOLS_DIR" &&
      "$UV" pip install --quiet --python "$TOOLS_DIR/bin/python" "${TOOLS_REQUIREMENTS[@]}"
  else
    "$TOOLS_PY" -m venv "$TOOLS_DIR" &&
      "$TOOLS_DIR/bin/python" -m pip install --quiet --disable-pip-version-check "${TOOLS_REQUIREMENTS[@]}"
  fi && touch "$TOOLS_DIR/.complete"
) 9>"$TOOLS_DIR.lock"
[ -e "$TOOLS_DIR/.complete" ] || fail "installing the boot tools (${TOOLS_REQUIREMENTS[*]}) failed"
TOOLS="$TOOLS_DIR/bin/python"
took "boot tools ready"

fetch() {  # key target sha256 what: nodes run these as root, so only what the client uploaded
  local actual
  store get "$1" "$2" || return 1
  actual=$(sha256sum "$2" 2>/dev/null | cut -d' ' -f1)
  if [ "$actual" != "$3" ]; then
    echo "coiled: refusing to run $4 $1: its sha256 is ${actual:-unknown}, expected $3"
    rm -f "$2"
    return 1
  fi
}

# 3. The node agent's code (kept in the cache by its sha256). Other nodes sharing the cache may
# replace the cached file at any moment: read it with one open (a file replaced meanwhile is
# still read whole), check the sha256 of this node's own copy, and add to the cache only whole
# files, under a private name first, then renamed.
BUNDLE="$CACHE/bundles/$BUNDLE_SHA256.zip"
cat "$BUNDLE" >"$ROOT/agent.zip.part" 2>/dev/null || : >"$ROOT/agent.zip.part"
if [ "$(sha256sum "$ROOT/agent.zip.part" | cut -d' ' -f1)" != "$BUNDLE_SHA256" ]; then
  fetch "$BUNDLE_KEY" "$ROOT/agent.zip.part" "$BUNDLE_SHA256" "the agent bundle" || fail "fetching the agent bundle failed"
  cat "$ROOT/agent.zip.part" >"$BUNDLE.$$" && mv -f "$BUNDLE.$$" "$BUNDLE" || rm -f "$BUNDLE.$$"
fi
mv -f "$ROOT/agent.zip.part" "$ROOT/agent.zip" || fail "placing the agent bundle failed"
AGENT_PATH="$ROOT/agent.zip"
rm -rf "$ROOT/code" "$ROOT/code.zip" "$ROOT/post_build.sh" "$ROOT/.agent-starting"
if [ -n "$CODE_KEY" ]; then
  fetch "$CODE_KEY" "$ROOT/code.zip" "$CODE_SHA256" "the local code" || fail "fetching the local code failed"
  "$TOOLS" -m zipfile -e "$ROOT/code.zip" "$ROOT/code" || fail "unpacking the local code failed"
  AGENT_PATH="$AGENT_PATH:$ROOT/code"
fi
took "agent bundle fetched"

# 4a. A container environment: the image, with pip packages and post_build layered on first.
if [ -n "$CONTAINER" ]; then
  if [ -n "$POST_BUILD_KEY" ]; then
    fetch "$POST_BUILD_KEY" "$ROOT/post_build.sh" "$POST_BUILD_SHA256" "the post_build script" || fail "fetching the post_build script failed"
  elif [ -n "$POST_BUILD" ]; then
    printf '%s' "$POST_BUILD" >"$ROOT/post_build.sh"
  fi
  cat >"$ROOT/container-setup.sh" <<'COILED_SETUP'
set -u
ROOT=$1
SOFTWARE=$2
AGENT_PATH=$3
shift 3
PY=$(command -v python || command -v python3) || { echo "coiled: the image has no python"; exit 1; }
if [ "$#" -gt 0 ]; then
  echo "coiled: installing $* in the image's Python"
  "$PY" -m pip install --disable-pip-version-check --no-input "$@" || {
    echo "coiled: installing the pip packages of software environment $SOFTWARE in the image failed"; exit 1; }
fi
if [ -e "$ROOT/post_build.sh" ]; then
  command -v bash >/dev/null || { echo "coiled: post_build needs bash, which the image lacks"; exit 1; }
  PREFIX=$("$PY" -c 'import sys; print(sys.prefix)')
  echo "coiled: running post_build of software environment $SOFTWARE"
  (export VIRTUAL_ENV="$PREFIX" CONDA_PREFIX="$PREFIX" PATH="$PREFIX/bin:$PATH"; bash "$ROOT/post_build.sh") || {
    echo "coiled: post_build of software environment $SOFTWARE failed (exit code $?)"; exit 1; }
fi
: >"$ROOT/.agent-starting"
PYTHONPATH="$AGENT_PATH" exec "$PY" -m coiled_core.node "$ROOT/node.json"
COILED_SETUP
  took "starting the image $CONTAINER"
  docker run --rm --network host -v "$ROOT:$ROOT" -w "$ROOT" -e COILED_INSTANCE_ID -e COILED_NODE_HOST \
    "$CONTAINER" sh "$ROOT/container-setup.sh" "$ROOT" "$SOFTWARE" "$AGENT_PATH" "${IMAGE_REQUIREMENTS[@]}"
  code=$?
  [ -e "$ROOT/.agent-starting" ] || fail "preparing the image $CONTAINER failed (exit code $code)"
  power_off $code
fi

# 4b. A venv environment: from this machine's cache, as a pack from the store, or built.
PYTHONPATH="$ROOT/agent.zip" "$TOOLS" -m coiled_core.node.envpack "$ROOT/environment.json" --interpreter "$PY" \
  --uv "$UV" --cache "$CACHE" --store "$ROOT/store.py" --result "$ROOT/environment.path" ||
  fail "preparing software environment $SOFTWARE failed"
ENV=$(cat "$ROOT/environment.path")
took "software environment $SOFTWARE ready"
if [ -n "${COILED_BUILD_ONLY:-}" ]; then
  echo "coiled: built only, as asked"
  power_off 0
fi

# 5. The node agent, until the cluster ends.
took "starting the node agent"
PYTHONPATH="$AGENT_PATH" "$ENV/bin/python" -m coiled_core.node "$ROOT/node.json"
code=$?
# An agent that failed (before it could ship its log, say) leaves its log where the client reads it.
[ "$code" = 0 ] || fail "the node agent ended with exit code $code"
power_off 0
"""

_PLACEHOLDER = re.compile(r"__([A-Z0-9_]+)__")
_HEREDOC_TERMINATORS = ("COILED_NODE_JSON", "COILED_ENVIRONMENT_JSON", "COILED_STORE_PROGRAM")


def render_boot_script(
    *,
    cluster: str,
    node_config: dict[str, Any],
    software: BootSoftware,
    store: NodeStore,
    bundle: StoredFile,
    local_code: StoredFile | None = None,
    log_key: str = "",
    node_id_command: str = "",
    power_off_command: str = "shutdown -h now",
    wait_seconds: float | None = None,
    limit: int | None = USER_DATA_LIMIT,
) -> str:
    """The boot script of one node (see the module documentation).

    Parameters:
        cluster: the cluster's name, for the log.
        node_config: the node config (``NodeConfig.to_dict()``), written to ``node.json``.
        software: the environment (:func:`boot_software`).
        store: how the node reaches the artifact store.
        bundle: the agent bundle (:func:`coiled_core.node.bundle.agent_bundle`, uploaded).
        local_code: the client's code (``include_local_code``), a zip put on ``PYTHONPATH``.
        log_key: where a node whose boot fails uploads its log (``<log_key><node id>.log``).
        node_id_command: shell commands printing this machine's id (the cloud's instance id or
            name), run when ``COILED_INSTANCE_ID`` is not set.
        power_off_command: shell commands that end the machine (skipped offline).
        wait_seconds: how long a node waits for another node's pack before building itself.
        limit: the most bytes the script may have (None: no limit).

    Raises:
        ValueError: the script exceeds ``limit``.
    """
    post_build = software.post_build
    inline = post_build if isinstance(post_build, str) else ""
    stored = post_build if isinstance(post_build, StoredFile) else None
    environment: dict[str, Any] = {
        "software": software.name,
        "env_hash": software.env_hash,
        "python": software.python,
        "requirements": list(software.requirements),
        "post_build": {"text": inline} if inline else ({"key": stored.key, "sha256": stored.sha256} if stored else None),
        "pins": software.pins,
        "build_id": software.build_id,
    }
    if wait_seconds is not None:
        environment["wait_seconds"] = wait_seconds
    for terminator in _HEREDOC_TERMINATORS:
        if any(line.strip() == terminator for line in store.program.splitlines()):
            raise ValueError(f"the store program may not hold a line {terminator!r}")
    values = {
        "CLUSTER": shlex.quote(cluster),
        "SOFTWARE": shlex.quote(software.name),
        "CONTAINER": shlex.quote(software.container or ""),
        "PYTHON": shlex.quote(software.python),
        "IMAGE_REQUIREMENTS": " ".join(shlex.quote(r) for r in software.image_requirements),
        "TOOLS_REQUIREMENTS": " ".join(shlex.quote(r) for r in (*store.requirements, *BOOT_TOOLS_REQUIREMENTS)),
        "POST_BUILD": shlex.quote(inline),
        "POST_BUILD_KEY": shlex.quote(stored.key if stored else ""),
        "POST_BUILD_SHA256": shlex.quote(stored.sha256 if stored else ""),
        "CODE_KEY": shlex.quote(local_code.key if local_code else ""),
        "CODE_SHA256": shlex.quote(local_code.sha256 if local_code else ""),
        "BUNDLE_KEY": shlex.quote(bundle.key),
        "BUNDLE_SHA256": shlex.quote(bundle.sha256),
        "LOG_KEY": shlex.quote(log_key),
        "STORE_SETTINGS": shlex.quote(json.dumps(store.settings, separators=(",", ":"))),
        "NODE_ID_COMMAND": node_id_command.strip() or "hostname",
        "POWER_OFF_COMMAND": power_off_command.strip() or ":",
        # Inside quoted heredocs: nothing in them is expanded. JSON is one line, so it cannot
        # hold a terminator line; the store program is checked above.
        "NODE_JSON": json.dumps(node_config, separators=(",", ":")),
        "ENVIRONMENT_JSON": json.dumps(environment, separators=(",", ":")),
        "STORE_PROGRAM": store.program.rstrip("\n"),
    }
    script = _PLACEHOLDER.sub(lambda m: values[m.group(1)], _TEMPLATE)
    size = len(script.encode())
    if limit is not None and size > limit:
        raise ValueError(f"the boot script is {size} bytes, over the {limit}-byte limit on user data")
    return script
