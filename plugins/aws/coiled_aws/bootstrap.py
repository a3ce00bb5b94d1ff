"""The boot script (EC2 user data) every node runs.

It builds the software environment, fetches the node agent's code from the artifact bucket with
the node's own instance role, refuses to run it unless its sha256 is the one written here (the
node then powers off), writes the node's config, runs the node agent and powers the machine off
when the agent ends; ``InstanceInitiatedShutdownBehavior=terminate`` makes EC2 delete it.

- *A venv* (pip environments): of the spec's Python version with its pip requirements (boto3
  among them), shared by spec hash and built under a lock, then its ``post_build`` commands run
  with bash, the venv's ``bin`` first on ``PATH`` and ``VIRTUAL_ENV``/``CONDA_PREFIX`` set to it;
  ``.complete`` marks a finished build. Objects are fetched with boto3 from the venv.
- *A container* (``container``): run with docker. When the environment layers pip packages on
  the image, has ``post_build`` commands or local code, a small setup script runs in the image
  first: ``pip install`` with the image's Python, then ``post_build`` (with ``sys.prefix`` of
  that Python as ``VIRTUAL_ENV``/``CONDA_PREFIX``), then the agent. Objects are fetched with the
  AMI's ``aws`` CLI.
- *Local code* (``include_local_code``): a zip fetched like the bundle, checked, unpacked into
  ``code/`` in the node's root and put on ``PYTHONPATH`` with the bundle, for the agent and so
  for its workers.
- *Long* ``post_build`` scripts (over :data:`POST_BUILD_INLINE_BYTES`) are an object in the
  bucket, fetched and checked the same way, not inline: user data is capped at 16 KB.

A step that fails before the agent starts (a pip build, ``post_build``, a fetch, a checksum) says
so in ``node.log``, which the node then uploads where the agent would have (the venv's boto3, or
the ``aws`` CLI), and powers off: the client's failed start shows the command's output. Private
keys are not in here: the agent reads them from SSM with the node's own role. EC2 caps user data
at 16 KB; :func:`render` checks the size.

Every value is put into the script once, shell-quoted, as a variable at its top, and the template
is rendered in one pass: text inside a value (a cluster name, the node config, a requirement, an
image name, a post_build command) is never expanded by the shell nor taken for another
placeholder.
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
SOFTWARE=__SOFTWARE__
CONTAINER=__CONTAINER__
PYTHON_VERSION=__PYTHON__
ENV_HASH=__ENV_HASH__
REQUIREMENTS=(__REQUIREMENTS__)
IMAGE_REQUIREMENTS=(__IMAGE_REQUIREMENTS__)
POST_BUILD=__POST_BUILD__
POST_BUILD_KEY=__POST_BUILD_KEY__
POST_BUILD_SHA256=__POST_BUILD_SHA256__
CODE_KEY=__CODE_KEY__
CODE_SHA256=__CODE_SHA256__
REGION=__REGION__
BUCKET=__BUCKET__
BUCKET_OWNER=__BUCKET_OWNER__
BUNDLE_KEY=__BUNDLE_KEY__
BUNDLE_SHA256=__BUNDLE_SHA256__
LOG_PREFIX=__LOG_PREFIX__
ROOT="${COILED_NODE_ROOT:-/opt/coiled}"
ENV=""
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

upload_log() {  # the agent, which ships the log, did not run: the client reads why from here
  [ -n "$LOG_PREFIX" ] || return 0
  local key="$LOG_PREFIX$COILED_INSTANCE_ID.log"
  if [ -n "$ENV" ] && "$ENV/bin/python" -c 'import boto3' 2>/dev/null; then
    "$ENV/bin/python" - "$REGION" "$BUCKET" "$key" "$BUCKET_OWNER" "$ROOT/node.log" <<'COILED_PUT' && return 0
import os
import sys
import boto3
region, bucket, key, owner, path = sys.argv[1:]
with open(path, "rb") as f:
    f.seek(max(0, os.fstat(f.fileno()).st_size - 2_000_000))
    body = f.read()
boto3.client("s3", region_name=region).put_object(Bucket=bucket, Key=key, Body=body, ExpectedBucketOwner=owner)
COILED_PUT
  fi
  command -v aws >/dev/null 2>&1 && aws s3api put-object --region "$REGION" --bucket "$BUCKET" --key "$key" \
    --expected-bucket-owner "$BUCKET_OWNER" --body "$ROOT/node.log" >/dev/null
}

fail() {  # a step before the agent failed: say which, ship the log, power off
  echo "coiled: $1; powering off"
  upload_log
  power_off 1
}

cat >"$ROOT/node.json" <<'COILED_NODE_JSON'
__NODE_JSON__
COILED_NODE_JSON

s3_get() {  # key target: with the node's own role, from the bucket's owner only
  if [ -z "$ENV" ]; then  # no Python environment on the host: the AMI's AWS CLI
    aws s3api get-object --region "$REGION" --bucket "$BUCKET" --key "$1" \
      --expected-bucket-owner "$BUCKET_OWNER" "$2" >/dev/null
  else  # boto3 is in the environment
    "$ENV/bin/python" - "$REGION" "$BUCKET" "$1" "$BUCKET_OWNER" "$2" <<'COILED_FETCH'
import sys
import boto3
region, bucket, key, owner, target = sys.argv[1:]
reply = boto3.client("s3", region_name=region).get_object(Bucket=bucket, Key=key, ExpectedBucketOwner=owner)
with open(target, "wb") as f:
    f.write(reply["Body"].read())
COILED_FETCH
  fi
}

fetch() {  # key target sha256 what: nodes run these as root, so only what the client uploaded
  local actual
  s3_get "$1" "$2" || return 1
  actual=$(sha256sum "$2" 2>/dev/null | cut -d' ' -f1)
  if [ "$actual" != "$3" ]; then
    echo "coiled: refusing to run $4 s3://$BUCKET/$1: its sha256 is ${actual:-unknown}, expected $3"
    rm -f "$2"
    return 1
  fi
}

post_build_script() {  # target: the post_build commands, from here or from the bucket
  if [ -n "$POST_BUILD_KEY" ]; then
    fetch "$POST_BUILD_KEY" "$1" "$POST_BUILD_SHA256" "the post_build script"
  else
    printf '%s' "$POST_BUILD" >"$1"
  fi
}

if [ -n "$CONTAINER" ]; then
  fetch "$BUNDLE_KEY" "$ROOT/agent.zip" "$BUNDLE_SHA256" "the agent bundle" || fail "fetching the agent bundle failed"
  if [ ${#IMAGE_REQUIREMENTS[@]} -eq 0 ] && [ -z "$POST_BUILD$POST_BUILD_KEY$CODE_KEY" ]; then
    docker run --rm --network host -v "$ROOT:$ROOT" -w "$ROOT" -e PYTHONPATH="$ROOT/agent.zip" \
      -e COILED_INSTANCE_ID -e COILED_NODE_HOST "$CONTAINER" python -m coiled_core.node "$ROOT/node.json"
    power_off $?
  fi
  rm -f "$ROOT/post_build.sh" "$ROOT/code.zip" "$ROOT/.agent-starting"
  if [ -n "$POST_BUILD$POST_BUILD_KEY" ]; then
    post_build_script "$ROOT/post_build.sh" || fail "fetching the post_build script failed"
  fi
  if [ -n "$CODE_KEY" ]; then
    fetch "$CODE_KEY" "$ROOT/code.zip" "$CODE_SHA256" "the local code" || fail "fetching the local code failed"
  fi
  # In the image, before the agent: pip packages on top, post_build, the local code unpacked.
  cat >"$ROOT/container-setup.sh" <<'COILED_SETUP'
set -u
ROOT=$1
SOFTWARE=$2
shift 2
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
AGENT_PATH="$ROOT/agent.zip"
if [ -e "$ROOT/code.zip" ]; then
  rm -rf "$ROOT/code" && "$PY" -m zipfile -e "$ROOT/code.zip" "$ROOT/code" || exit 1
  AGENT_PATH="$AGENT_PATH:$ROOT/code"
fi
: >"$ROOT/.agent-starting"
PYTHONPATH="$AGENT_PATH" exec "$PY" -m coiled_core.node "$ROOT/node.json"
COILED_SETUP
  docker run --rm --network host -v "$ROOT:$ROOT" -w "$ROOT" -e COILED_INSTANCE_ID -e COILED_NODE_HOST \
    "$CONTAINER" sh "$ROOT/container-setup.sh" "$ROOT" "$SOFTWARE" "${IMAGE_REQUIREMENTS[@]}"
  code=$?
  [ -e "$ROOT/.agent-starting" ] || fail "preparing the image $CONTAINER failed (exit code $code)"
  power_off $code
fi

build_env() {  # a venv of the spec's Python and requirements, then its post_build
  rm -rf "$ENV"
  local py
  py=$(command -v "python$PYTHON_VERSION" || command -v python3)
  if [ "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$PYTHON_VERSION" ]; then
    "$py" -m pip install --quiet --user uv && "$HOME/.local/bin/uv" venv --python "$PYTHON_VERSION" --seed "$ENV" || return 1
  else
    "$py" -m venv "$ENV" || return 1
  fi
  "$ENV/bin/python" -m pip install --disable-pip-version-check --no-input "${REQUIREMENTS[@]}" || return 1
  if [ -n "$POST_BUILD$POST_BUILD_KEY" ]; then
    post_build_script "$ENV/.post_build.sh" || return 1
    echo "coiled: running post_build of software environment $SOFTWARE"
    (export VIRTUAL_ENV="$ENV" CONDA_PREFIX="$ENV" PATH="$ENV/bin:$PATH"; bash "$ENV/.post_build.sh") || {
      echo "coiled: post_build of software environment $SOFTWARE failed (exit code $?)"; return 1; }
  fi
  touch "$ENV/.complete"
}

CACHE="${COILED_ENV_CACHE:-$ROOT/envs}"
ENV="$CACHE/$ENV_HASH"
mkdir -p "$CACHE"
(
  flock 9
  if [ ! -e "$ENV/.complete" ]; then
    # A failed build is shipped while its environment (and boto3) still exists, then removed.
    build_env || { echo "coiled: building software environment $SOFTWARE failed; powering off"; upload_log; rm -rf "$ENV"; exit 1; }
  fi
) 9>"$CACHE/$ENV_HASH.lock"
[ -e "$ENV/.complete" ] || power_off 1

fetch "$BUNDLE_KEY" "$ROOT/agent.zip" "$BUNDLE_SHA256" "the agent bundle" || fail "fetching the agent bundle failed"
AGENT_PATH="$ROOT/agent.zip"
if [ -n "$CODE_KEY" ]; then
  fetch "$CODE_KEY" "$ROOT/code.zip" "$CODE_SHA256" "the local code" || fail "fetching the local code failed"
  rm -rf "$ROOT/code" && "$ENV/bin/python" -m zipfile -e "$ROOT/code.zip" "$ROOT/code" || fail "unpacking the local code failed"
  AGENT_PATH="$AGENT_PATH:$ROOT/code"
fi
PYTHONPATH="$AGENT_PATH" "$ENV/bin/python" -m coiled_core.node "$ROOT/node.json"
power_off $?
"""

_PLACEHOLDER = re.compile(r"__([A-Z0-9_]+)__")


#: ``post_build`` scripts up to this size go inline in the user data; longer ones are shipped
#: as an object in the artifact bucket (see :func:`render`).
POST_BUILD_INLINE_BYTES = 4096


def post_build_script(lines: list[str]) -> str:
    """The script a node runs for ``post_build`` (with bash): the lines, stopping at the first
    that fails, as the local backend runs them."""
    return "set -e\n" + "\n".join(lines) + "\n"


def render(
    cluster: str,
    node_config: dict[str, Any],
    requirements: list[str],
    python: str,
    env_hash: str,
    bundle: StoredObject,
    container: str | None = None,
    *,
    software: str = "",
    image_requirements: list[str] | None = None,
    post_build: str | StoredObject | None = None,
    local_code: StoredObject | None = None,
    log_prefix: str = "",
) -> str:
    """The user data of one node, which runs ``bundle`` (the agent) only if its sha256 matches.

    ``requirements`` are installed in the venv of a node without ``container``;
    ``image_requirements`` with the image's own pip, in the container, before the agent starts.
    ``post_build`` (a script, see :func:`post_build_script`, or the object holding a long one)
    runs after them: in the venv, or in the container. ``local_code`` (a zip) is fetched,
    checked, unpacked and put on the agent's ``PYTHONPATH``. Objects are fetched with the node's
    own role and used only if their sha256 is the one written here. ``log_prefix``: where a node
    whose boot fails before the agent starts uploads its log (``<prefix><instance-id>.log``),
    so that the client can say why; empty: nowhere. ``software`` names the environment in
    messages.

    Raises ValueError if it exceeds EC2's 16 KB.
    """
    stored_post_build = post_build if isinstance(post_build, StoredObject) else None
    inline_post_build = post_build if isinstance(post_build, str) else ""
    for stored in (stored_post_build, local_code):
        if stored is not None and (stored.bucket, stored.owner, stored.region) != (bundle.bucket, bundle.owner, bundle.region):
            raise ValueError(f"{stored.key} is not in the agent bundle's bucket {bundle.bucket}")
    values = {
        "CLUSTER": shlex.quote(cluster),
        "SOFTWARE": shlex.quote(software),
        "CONTAINER": shlex.quote(container or ""),
        "PYTHON": shlex.quote(python),
        "ENV_HASH": shlex.quote(env_hash),
        "REQUIREMENTS": " ".join(shlex.quote(r) for r in requirements),
        "IMAGE_REQUIREMENTS": " ".join(shlex.quote(r) for r in image_requirements or []),
        "POST_BUILD": shlex.quote(inline_post_build),
        "POST_BUILD_KEY": shlex.quote(stored_post_build.key if stored_post_build else ""),
        "POST_BUILD_SHA256": shlex.quote(stored_post_build.sha256 if stored_post_build else ""),
        "CODE_KEY": shlex.quote(local_code.key if local_code else ""),
        "CODE_SHA256": shlex.quote(local_code.sha256 if local_code else ""),
        "REGION": shlex.quote(bundle.region),
        "BUCKET": shlex.quote(bundle.bucket),
        "BUCKET_OWNER": shlex.quote(bundle.owner),
        "BUNDLE_KEY": shlex.quote(bundle.key),
        "BUNDLE_SHA256": shlex.quote(bundle.sha256),
        "LOG_PREFIX": shlex.quote(log_prefix),
        # Inside a quoted heredoc: nothing in it is expanded. JSON is one line, so it cannot hold
        # the terminator line.
        "NODE_JSON": json.dumps(node_config, separators=(",", ":")),
    }
    script = _PLACEHOLDER.sub(lambda m: values[m.group(1)], _TEMPLATE)
    size = len(script.encode())
    if size > USER_DATA_LIMIT:
        raise ValueError(f"the boot script is {size} bytes, over EC2's {USER_DATA_LIMIT}-byte user data limit")
    return script
