"""The startup script (``startup-script`` metadata) of a GCP node: the core's VM boot script
(:func:`coiled_core.node.bootstrap.render_boot_script`) with GCP's parts:

- the store program :mod:`coiled_gcp.node_store` (Cloud Storage with the node's service account);
- the node's id: its instance name, from the metadata server;
- the power-off: **the node deletes its own instance** (a powered-off GCE instance is only
  ``TERMINATED``, and keeps its disk and its name). It asks the metadata server for its name,
  zone and project and calls ``instances.delete`` on itself with the service account's token
  (the node's service account holds ``compute.instances.delete`` on each of its cluster's
  instances, through the instance-level grant of :mod:`coiled_gcp.identity`); if that fails it
  powers off, and ``coiled cluster gc`` deletes the ``TERMINATED`` instance. Spot preemption and
  ``maxRunDuration`` delete the instance through ``instanceTerminationAction=DELETE``.

No secret is in the script: the agent reads its role's secret from Secret Manager
(:mod:`coiled_gcp.node`). GCE allows 256 KB of metadata per value; the core's script stays far
below.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from coiled_core.backend import BootSoftware, NodeStore, StoredFile, render_boot_script

#: GCE's limit on one metadata value.
METADATA_VALUE_LIMIT = 256 * 1024

_METADATA = 'curl -sf -H "Metadata-Flavor: Google" http://metadata.google.internal/computeMetadata/v1'
#: This machine's instance name, from the metadata server.
NODE_ID_COMMAND = f"{_METADATA}/instance/name"
#: Delete this instance through the Compute API with the node's service account; power off if
#: that fails (gc then deletes the stopped instance).
POWER_OFF_COMMAND = f"""\
token=$({_METADATA}/instance/service-accounts/default/token | sed -E 's/.*"access_token" *: *"([^"]+)".*/\\1/')
zone=$({_METADATA}/instance/zone | sed 's|.*/||')
project=$({_METADATA}/project/project-id)
# The token goes to curl on its standard input (printf is a shell builtin): never in a
# process's arguments, which every user of the machine can read.
printf 'Authorization: Bearer %s\n' "$token" | curl -sf -X DELETE -H @- \\
  "https://compute.googleapis.com/compute/v1/projects/$project/zones/$zone/instances/$COILED_INSTANCE_ID" >/dev/null ||
  echo "coiled: deleting this instance failed; powering off"
shutdown -h now"""


@lru_cache(maxsize=1)
def store_program() -> str:
    """The source of :mod:`coiled_gcp.node_store`, run by the node as its store program."""
    return (Path(__file__).parent / "node_store.py").read_text()


def node_store(bucket: str, token: str | None = None) -> NodeStore:
    """How a node reaches the artifact bucket; ``token`` only for the client's own builds."""
    return NodeStore(program=store_program(), requirements=(), settings={"bucket": bucket, **({"token": token} if token else {})})


def render(
    cluster: str,
    node_config: dict[str, Any],
    software: BootSoftware,
    bucket: str,
    bundle: StoredFile,
    *,
    local_code: StoredFile | None = None,
    log_prefix: str = "",
) -> str:
    """The startup script of one node; runs ``bundle`` only if its sha256 matches."""
    return render_boot_script(
        cluster=cluster,
        node_config=node_config,
        software=software,
        store=node_store(bucket),
        bundle=bundle,
        local_code=local_code,
        log_key=log_prefix,
        node_id_command=NODE_ID_COMMAND,
        power_off_command=POWER_OFF_COMMAND,
        limit=METADATA_VALUE_LIMIT,
    )
