"""The nodes' identity: one least-privilege service account per cluster.

Nodes never run as the Compute Engine default service account (often project Editor: any task
on the cluster would be Editor). Unless ``backend_options.service_account`` names one of the
user's own, each cluster gets a service account of its own, ``coiled-node-<hash of the cluster
label>``, made at provision and deleted with the cluster, and that account is granted, on each
resource rather than on the project:

- on each of the cluster's instances (instance-level IAM, ``instances.setIamPolicy``), the
  custom role ``coiledNode`` (:data:`NODE_PERMISSIONS`): a node deletes its own cluster's
  instances (its own, at its end), none of another cluster's;
- on the cluster's two role secrets (secret-level IAM), the same role: read them, and, for the
  scheduler's clean-up, delete them; no other secret of the project;
- on the artifact bucket, conditional bindings on object names (IAM conditions test resource
  names, never labels): read ``agent/`` and ``envs/``; write ``envs/`` and the cluster's own
  ``logs/<label>/``.

Per-cluster accounts are what makes "its own cluster" expressible: a condition on one shared
account's binding would hold for every cluster's nodes alike.
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from typing import Any

from coiled_core.backend import ProvisionError
from coiled_gcp.session import GCP, in_parallel

#: The custom role granted on the cluster's own resources.
NODE_ROLE_ID = "coiledNode"
NODE_PERMISSIONS = [
    "compute.instances.delete",
    "secretmanager.secrets.delete",
    "secretmanager.versions.access",
]
OBJECT_VIEWER = "roles/storage.objectViewer"
OBJECT_USER = "roles/storage.objectUser"


def account_id(label: str) -> str:
    """The service account id of cluster ``label`` (6 to 30 characters, IAM's rule)."""
    return f"coiled-node-{hashlib.sha256(label.encode()).hexdigest()[:16]}"


def account_email(gcp: GCP, label: str) -> str:
    return f"{account_id(label)}@{gcp.project}.iam.gserviceaccount.com"


def node_role(gcp: GCP) -> str:
    return f"projects/{gcp.project}/roles/{NODE_ROLE_ID}"


def _iam_url(gcp: GCP, path: str) -> str:
    return f"{gcp.endpoint or 'https://iam.googleapis.com'}/v1/projects/{gcp.project}/{path}"


def _check(reply: Any, what: str, ok: tuple[int, ...] = ()) -> None:
    if reply.status_code >= 400 and reply.status_code not in ok:
        raise ProvisionError(f"{what}: HTTP {reply.status_code}: {reply.text[:300]}")


def ensure_node_role(gcp: GCP) -> str:
    """Create the project's custom role ``coiledNode`` once (kept: it grants nothing alone)."""
    body = {
        "roleId": NODE_ROLE_ID,
        "role": {
            "title": "Coiled cluster node",
            "description": "What a node of a coiled cluster may do to its own cluster's instances and secrets",
            "includedPermissions": NODE_PERMISSIONS,
            "stage": "GA",
        },
    }
    reply = gcp.http.post(_iam_url(gcp, "roles"), json=body)
    _check(reply, f"creating the custom role {NODE_ROLE_ID}", ok=(409,))
    return node_role(gcp)


def create_account(gcp: GCP, label: str, name: str) -> str:
    """Create cluster ``label``'s service account (kept if it exists); return its email."""
    body = {
        "accountId": account_id(label),
        "serviceAccount": {"displayName": f"coiled {label}"[:100], "description": f"coiled cluster {name!r}: its nodes' identity"},
    }
    reply = gcp.http.post(_iam_url(gcp, "serviceAccounts"), json=body)
    _check(reply, f"creating the nodes' service account {account_id(label)}", ok=(409,))
    return account_email(gcp, label)


def delete_account(gcp: GCP, label: str) -> bool:
    reply = gcp.http.delete(_iam_url(gcp, f"serviceAccounts/{account_email(gcp, label)}"))
    _check(reply, f"deleting the service account {account_id(label)}", ok=(404,))
    return reply.status_code < 400


def grant_instances(gcp: GCP, zone: str, names: list[str], email: str, parallel: int = 16) -> None:
    """Instance-level policy on each of ``names`` (``parallel`` at a time): the cluster's
    account may delete it."""
    from google.cloud import compute_v1

    policy = compute_v1.Policy(bindings=[compute_v1.Binding(role=node_role(gcp), members=[f"serviceAccount:{email}"])])

    def grant(name: str) -> None:
        request = compute_v1.ZoneSetPolicyRequest(policy=policy)
        gcp.instances.set_iam_policy(project=gcp.project, zone=zone, resource=name, zone_set_policy_request_resource=request)

    in_parallel(grant, names, parallel)


def grant_secrets(gcp: GCP, secrets: list[str], email: str) -> None:
    """Secret-level policy on each of ``secrets``: the cluster's account reads (and may delete) it."""
    policy = {"bindings": [{"role": node_role(gcp), "members": [f"serviceAccount:{email}"]}]}
    for secret in secrets:
        reply = gcp.http.post(gcp.secrets_url(f"secrets/{secret}:setIamPolicy"), json={"policy": policy})
        _check(reply, f"granting the nodes access to secret {secret}")


def _objects(bucket: str, prefix: str) -> str:
    return f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{prefix}")'


def _build_objects(bucket: str, build_id: str) -> str:
    # envs/<key>/builds/<build id>/...: the key varies, so a prefix cannot say it; extract()
    # answers "" unless the name has this shape (IAM conditions test names, never labels).
    return f'resource.name.extract("projects/_/buckets/{bucket}/objects/envs/{{key}}/builds/{build_id}/") != ""'


def bucket_bindings(bucket: str, label: str, email: str, build_id: str = "") -> list[dict]:
    """The bucket's conditional bindings for cluster ``label``'s account: it reads the agent and
    the environment packs, and writes only its own logs and the packs of its own build
    (``build_id``; none without one): never another build, a pin or the agent."""
    member = f"serviceAccount:{email}"
    read = " || ".join(_objects(bucket, p) for p in ("agent/", "envs/"))
    write = " || ".join([_objects(bucket, f"logs/{label}/"), *([_build_objects(bucket, build_id)] if build_id else [])])
    return [
        {"role": OBJECT_VIEWER, "members": [member], "condition": {"title": f"coiled {label} reads", "expression": read}},
        {"role": OBJECT_USER, "members": [member], "condition": {"title": f"coiled {label} writes", "expression": write}},
    ]


def _edit_bucket_policy(gcp: GCP, bucket: str, change: Any, what: str) -> None:
    """Read, change and write the bucket's policy, again if another writer came in between
    (the etag: 412)."""
    url = gcp.storage_url(f"b/{urllib.parse.quote(bucket, safe='')}/iam")
    for attempt in range(8):
        reply = gcp.http.get(url + "?optionsRequestedPolicyVersion=3")
        _check(reply, what)
        policy = reply.json()
        bindings = change(policy.get("bindings", []))
        if bindings == policy.get("bindings", []):
            return  # nothing to change
        policy["bindings"] = bindings
        policy["version"] = 3  # conditions need version 3
        reply = gcp.http.put(url, json=policy)
        if reply.status_code not in (409, 412):
            _check(reply, what)
            return
        time.sleep(0.2 * (attempt + 1))
    raise ProvisionError(f"{what}: the bucket's policy kept changing underneath")


def grant_bucket(gcp: GCP, bucket: str, label: str, email: str, build_id: str = "") -> None:
    member = f"serviceAccount:{email}"
    ours = bucket_bindings(bucket, label, email, build_id)
    _edit_bucket_policy(gcp, bucket, lambda bindings: [b for b in bindings if member not in b.get("members", [])] + ours, f"granting the nodes access to bucket {bucket}")


def revoke_bucket(gcp: GCP, bucket: str, label: str) -> None:
    """Remove every binding of cluster ``label``'s account from the bucket's policy."""
    member = f"serviceAccount:{account_email(gcp, label)}"
    deleted = f"deleted:{member}"

    def without(bindings: list[dict]) -> list[dict]:
        kept = []
        for binding in bindings:
            members = [m for m in binding.get("members", []) if m != member and not m.startswith(deleted)]
            if members:
                kept.append({**binding, "members": members})
        return kept

    _edit_bucket_policy(gcp, bucket, without, f"removing cluster {label}'s access to bucket {bucket}")
