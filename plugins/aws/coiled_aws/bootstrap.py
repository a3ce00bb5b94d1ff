"""The boot script (EC2 user data) of an AWS node: the core's VM boot script with AWS's parts.

The script itself is :func:`coiled_core.node.bootstrap.render_boot_script`, shared by every VM
backend (Python and uv, the environment as a pack built once per spec and fetched by every later
node, the agent bundle run only with the sha256 written here, power-off when the agent ends). AWS
adds:

- the store program :mod:`coiled_aws.node_store`: the node reaches the artifact bucket with its
  own instance role, naming the bucket's owner in every call (``ExpectedBucketOwner``);
- the node's id from the instance metadata service (IMDSv2);
- ``shutdown -h now`` as the power-off, which ``InstanceInitiatedShutdownBehavior=terminate``
  turns into the instance's termination.

Private keys are not in here: the agent reads them from SSM with the node's own role
(:mod:`coiled_aws.node`). EC2 caps user data at 16 KB; :func:`render` checks the size.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from coiled_aws.artifacts import StoredObject
from coiled_core.backend import BootSoftware, NodeStore, StoredFile, render_boot_script

#: EC2's limit on user data.
USER_DATA_LIMIT = 16 * 1024

#: This machine's instance id, from the instance metadata service (IMDSv2). The token goes to
#: curl on its standard input (``-H @-``; printf is a shell builtin), never in a process's
#: arguments, which every local user can read.
IMDS_INSTANCE_ID = """\
token=$(curl -s -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
printf 'X-aws-ec2-metadata-token: %s\n' "$token" | curl -s -H @- http://169.254.169.254/latest/meta-data/instance-id"""


@lru_cache(maxsize=1)
def store_program() -> str:
    """The source of :mod:`coiled_aws.node_store`, which the node runs as its store program."""
    return (Path(__file__).parent / "node_store.py").read_text()


def node_store(bucket: str, owner: str, region: str) -> NodeStore:
    """How a node reaches the artifact bucket ``bucket`` of account ``owner``."""
    return NodeStore(program=store_program(), requirements=("boto3",), settings={"bucket": bucket, "owner": owner, "region": region})


def _file(stored: StoredObject, bundle: StoredObject) -> StoredFile:
    if (stored.bucket, stored.owner, stored.region) != (bundle.bucket, bundle.owner, bundle.region):
        raise ValueError(f"{stored.key} is not in the agent bundle's bucket {bundle.bucket}")
    return StoredFile(stored.key, stored.sha256)


def render(
    cluster: str,
    node_config: dict[str, Any],
    software: BootSoftware,
    bundle: StoredObject,
    *,
    local_code: StoredObject | None = None,
    log_prefix: str = "",
) -> str:
    """The user data of one node, which runs ``bundle`` (the agent) only if its sha256 matches.

    ``software``'s ``post_build`` may be a :class:`StoredFile` in the bundle's bucket. A node
    whose boot fails before the agent starts uploads its log to ``<log_prefix><instance-id>.log``.

    Raises ValueError if it exceeds EC2's 16 KB, or if an object is not in the bundle's bucket.
    """
    if local_code is not None:
        _file(local_code, bundle)
    return render_boot_script(
        cluster=cluster,
        node_config=node_config,
        software=software,
        store=node_store(bundle.bucket, bundle.owner, bundle.region),
        bundle=StoredFile(bundle.key, bundle.sha256),
        local_code=StoredFile(local_code.key, local_code.sha256) if local_code else None,
        log_key=log_prefix,
        node_id_command=IMDS_INSTANCE_ID,
        power_off_command="shutdown -h now",
        limit=USER_DATA_LIMIT,
    )
