"""The boot script (EC2 user data) every node runs.

It builds the software environment (a venv of the client's Python version with the spec's pip
requirements, shared by hash and built under a lock; or a container with docker), fetches the
node agent's code from the artifact bucket with the node's own instance role (boto3 from that
venv; the AMI's ``aws`` CLI for a container), refuses to run it unless its sha256 is the one
written here (the node then powers off), writes the node's config, runs the node agent and
powers the machine off when the agent ends; ``InstanceInitiatedShutdownBehavior=terminate``
makes EC2 delete it. Private keys are not in here: the agent reads them from SSM with the node's
own role. EC2 caps user data at 16 KB; :func:`render` checks the size.

Every value is put into the script once, shell-quoted, as a variable at its top, and the template
is rendered in one pass: text inside a value (a cluster name, the node config, a requirement, an
image name) is never expanded by the shell nor taken for another placeholder.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from coiled_aws.artifacts import StoredObject

#: EC2's limit on user data.
USER_DATA_LIMIT = 16 * 1024

_TEMPLATE = r"""#!/bin/bash
# A Dask node of a coiled cluster: software environment, node agent, power-off.
set -u
CLUSTER=__CLUSTER__
CONTAINER=__CONTAINER__
PYTHON_VERSION=__PYTHON__
ENV_HASH=__ENV_HASH__
REQUIREMENTS=(__REQUIREMENTS__)
REGION=__REGION__
BUCKET=__BUCKET__
BUCKET_OWNER=__BUCKET_OWNER__
BUNDLE_KEY=__BUNDLE_KEY__
BUNDLE_SHA256=__BUNDLE_SHA256__
ROOT="${COILED_NODE_ROOT:-/opt/coiled}"
mkdir -p "$ROOT" && cd "$ROOT" || exit 1
exec >>"$ROOT/node.log" 2>&1
echo "coiled: booting node of cluster $CLUSTER"

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

verify_bundle() {  # the agent runs as root: only the bundle the client uploaded may run
  local actual
  actual=$(sha256sum "$ROOT/agent.zip" 2>/dev/null | cut -d' ' -f1)
  if [ "$actual" != "$BUNDLE_SHA256" ]; then
    echo "coiled: refusing to run the agent bundle s3://$BUCKET/$BUNDLE_KEY: its sha256 is ${actual:-unknown}, expected $BUNDLE_SHA256; powering off"
    rm -f "$ROOT/agent.zip"
    power_off 1
  fi
}

if [ -n "$CONTAINER" ]; then
  # No Python environment on the host: the AMI's AWS CLI fetches with the node's role.
  aws s3api get-object --region "$REGION" --bucket "$BUCKET" --key "$BUNDLE_KEY" \
    --expected-bucket-owner "$BUCKET_OWNER" "$ROOT/agent.zip" >/dev/null || power_off 1
  verify_bundle
  docker run --rm --network host -v "$ROOT:$ROOT" -w "$ROOT" -e PYTHONPATH="$ROOT/agent.zip" \
    -e COILED_INSTANCE_ID -e COILED_NODE_HOST "$CONTAINER" python -m coiled_core.node "$ROOT/node.json"
  power_off $?
fi

CACHE="${COILED_ENV_CACHE:-$ROOT/envs}"
ENV="$CACHE/$ENV_HASH"
mkdir -p "$CACHE"
(
  flock 9
  if [ ! -e "$ENV/.complete" ]; then
    rm -rf "$ENV"
    PY=$(command -v "python$PYTHON_VERSION" || command -v python3)
    if [ "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$PYTHON_VERSION" ]; then
      "$PY" -m pip install --quiet --user uv && "$HOME/.local/bin/uv" venv --python "$PYTHON_VERSION" --seed "$ENV"
    else
      "$PY" -m venv "$ENV"
    fi
    "$ENV/bin/python" -m pip install --disable-pip-version-check --no-input "${REQUIREMENTS[@]}" && touch "$ENV/.complete"
  fi
) 9>"$CACHE/$ENV_HASH.lock"
[ -e "$ENV/.complete" ] || { echo "coiled: building the software environment failed"; power_off 1; }

# boto3 is in the environment: it fetches with the node's role, from the bucket's owner only.
"$ENV/bin/python" - "$REGION" "$BUCKET" "$BUNDLE_KEY" "$BUCKET_OWNER" "$ROOT/agent.zip" <<'COILED_FETCH' || power_off 1
import sys
import boto3
region, bucket, key, owner, target = sys.argv[1:]
reply = boto3.client("s3", region_name=region).get_object(Bucket=bucket, Key=key, ExpectedBucketOwner=owner)
with open(target, "wb") as f:
    f.write(reply["Body"].read())
COILED_FETCH
verify_bundle
PYTHONPATH="$ROOT/agent.zip" "$ENV/bin/python" -m coiled_core.node "$ROOT/node.json"
power_off $?
"""

_PLACEHOLDER = re.compile(r"__([A-Z0-9_]+)__")


def render(
    cluster: str,
    node_config: dict[str, Any],
    requirements: list[str],
    python: str,
    env_hash: str,
    bundle: StoredObject,
    container: str | None = None,
) -> str:
    """The user data of one node, which runs ``bundle`` (the agent) only if its sha256 matches.

    Raises ValueError if it exceeds EC2's 16 KB.
    """
    values = {
        "CLUSTER": shlex.quote(cluster),
        "CONTAINER": shlex.quote(container or ""),
        "PYTHON": shlex.quote(python),
        "ENV_HASH": shlex.quote(env_hash),
        "REQUIREMENTS": " ".join(shlex.quote(r) for r in requirements),
        "REGION": shlex.quote(bundle.region),
        "BUCKET": shlex.quote(bundle.bucket),
        "BUCKET_OWNER": shlex.quote(bundle.owner),
        "BUNDLE_KEY": shlex.quote(bundle.key),
        "BUNDLE_SHA256": shlex.quote(bundle.sha256),
        # Inside a quoted heredoc: nothing in it is expanded. JSON is one line, so it cannot hold
        # the terminator line.
        "NODE_JSON": json.dumps(node_config, separators=(",", ":")),
    }
    script = _PLACEHOLDER.sub(lambda m: values[m.group(1)], _TEMPLATE)
    size = len(script.encode())
    if size > USER_DATA_LIMIT:
        raise ValueError(f"the boot script is {size} bytes, over EC2's {USER_DATA_LIMIT}-byte user data limit")
    return script
