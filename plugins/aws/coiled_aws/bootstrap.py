"""The boot script (EC2 user data) every node runs.

It builds the software environment (a venv of the client's Python version with the spec's pip
requirements, shared by hash and built under a lock; or a container with docker), downloads the
node agent's code through a presigned URL, writes the node's config, runs the node agent and
powers the machine off when the agent ends; ``InstanceInitiatedShutdownBehavior=terminate``
makes EC2 delete it. Private keys are not in here: the agent reads them from SSM with the node's
own role. EC2 caps user data at 16 KB; :func:`render` checks the size.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

#: EC2's limit on user data.
USER_DATA_LIMIT = 16 * 1024

_TEMPLATE = r"""#!/bin/bash
# Dask node of cluster __CLUSTER__ (coiled): software environment, node agent, power-off.
set -u
ROOT="${COILED_NODE_ROOT:-/opt/coiled}"
mkdir -p "$ROOT" && cd "$ROOT" || exit 1
exec >>"$ROOT/node.log" 2>&1
echo "coiled: booting node of cluster __CLUSTER__"

imds() {
  local token
  token=$(curl -s -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
  curl -s -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}
export COILED_INSTANCE_ID="${COILED_INSTANCE_ID:-$(imds instance-id)}"

power_off() {
  # Offline simulators turn the script's exit into the instance's termination.
  [ -n "${COILED_OFFLINE:-}" ] || shutdown -h now
  exit "${1:-0}"
}

cat >"$ROOT/node.json" <<'COILED_NODE_JSON'
__NODE_JSON__
COILED_NODE_JSON

fetch() {  # fetch URL FILE, with the interpreter at hand (no AWS tooling needed)
  "$1" -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$2" "$3"
}

if [ -n "__CONTAINER__" ]; then
  PY=$(command -v python3) || power_off 1
  fetch "$PY" "__BUNDLE_URL__" "$ROOT/agent.zip" || power_off 1
  docker run --rm --network host -v "$ROOT:$ROOT" -w "$ROOT" -e PYTHONPATH="$ROOT/agent.zip" \
    -e COILED_INSTANCE_ID -e COILED_NODE_HOST __CONTAINER__ python -m coiled_core.node "$ROOT/node.json"
  power_off $?
fi

CACHE="${COILED_ENV_CACHE:-$ROOT/envs}"
ENV="$CACHE/__ENV_HASH__"
mkdir -p "$CACHE"
(
  flock 9
  if [ ! -e "$ENV/.complete" ]; then
    rm -rf "$ENV"
    PY=$(command -v python__PYTHON__ || command -v python3)
    if [ "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "__PYTHON__" ]; then
      "$PY" -m pip install --quiet --user uv && "$HOME/.local/bin/uv" venv --python __PYTHON__ --seed "$ENV"
    else
      "$PY" -m venv "$ENV"
    fi
    "$ENV/bin/python" -m pip install --disable-pip-version-check --no-input __REQUIREMENTS__ && touch "$ENV/.complete"
  fi
) 9>"$CACHE/__ENV_HASH__.lock"
[ -e "$ENV/.complete" ] || { echo "coiled: building the software environment failed"; power_off 1; }

fetch "$ENV/bin/python" "__BUNDLE_URL__" "$ROOT/agent.zip" || power_off 1
PYTHONPATH="$ROOT/agent.zip" "$ENV/bin/python" -m coiled_core.node "$ROOT/node.json"
power_off $?
"""


def render(
    cluster: str,
    node_config: dict[str, Any],
    requirements: list[str],
    python: str,
    env_hash: str,
    bundle_url: str,
    container: str | None = None,
) -> str:
    """The user data of one node. Raises ValueError if it exceeds EC2's 16 KB."""
    script = (
        _TEMPLATE.replace("__CLUSTER__", cluster)
        .replace("__NODE_JSON__", json.dumps(node_config, separators=(",", ":")))
        .replace("__CONTAINER__", shlex.quote(container) if container else "")
        .replace("__ENV_HASH__", env_hash)
        .replace("__PYTHON__", python)
        .replace("__REQUIREMENTS__", " ".join(shlex.quote(r) for r in requirements))
        .replace("__BUNDLE_URL__", bundle_url)
    )
    size = len(script.encode())
    if size > USER_DATA_LIMIT:
        raise ValueError(f"the boot script is {size} bytes, over EC2's {USER_DATA_LIMIT}-byte user data limit")
    return script
