"""The artifact bucket and the cluster's secrets, through the Cloud Storage and Secret Manager
JSON APIs.

- Bucket ``coiled-artifacts-<project>-<region>`` (or ``bucket``): the agent bundle and local code
  under ``agent/`` (named by sha256), environment packs under ``envs/``, node logs under
  ``logs/<cluster>/<instance>.log`` (deleted by a lifecycle rule :data:`LOG_RETENTION_DAYS`
  days after they were last written), and name claims under ``claims/<cluster>.json``, each created
  with ``ifGenerationMatch=0`` (atomic create-if-absent; 412 when it exists).
- Secrets ``coiled-<cluster label>-<role>`` (scheduler, worker: that role's TLS material and the
  cluster's ``environ``) and ``coiled-<cluster label>-spec``, labelled with the cluster. A node reads
  its role's secret with its own service account; nothing secret is in instance metadata.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
from dataclasses import dataclass

from coiled_core.backend import ProvisionError
from coiled_gcp.session import GCP


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    sha256: str


def bucket_name(gcp: GCP) -> str:
    return gcp.options.bucket or f"coiled-artifacts-{gcp.project}-{gcp.region}"[:63]


def _check(reply, what: str) -> None:
    if reply.status_code >= 400:
        raise ProvisionError(f"{what}: HTTP {reply.status_code}: {reply.text[:300]}")


#: Node logs (``logs/``) are deleted this many days after they were last written.
LOG_RETENTION_DAYS = 30
LOGS_RULE = {"action": {"type": "Delete"}, "condition": {"age": LOG_RETENTION_DAYS, "matchesPrefix": ["logs/"]}}
LOGS_LIFECYCLE = {"rule": [LOGS_RULE]}


class ForeignBucketError(ProvisionError):
    """The artifact bucket exists but another project owns it (or this project may not read it)."""


def _foreign_bucket(gcp: GCP, name: str) -> ForeignBucketError:
    return ForeignBucketError(
        f"the artifact bucket {name!r} exists but is not owned by project {gcp.project} (or this project's credentials "
        "may not read it): another project may have taken its name. Nodes would run code from it, so it is not used; "
        "delete it if it is yours, or choose another name with backend_options={'bucket': 'my-coiled-artifacts'}"
    )


def project_number(gcp: GCP) -> str:
    """The project's number (Cloud Resource Manager ``projects.get``), which owns its buckets."""
    cached = getattr(gcp, "_project_number", None)
    if cached is None:
        base = gcp.endpoint or "https://cloudresourcemanager.googleapis.com"
        reply = gcp.http.get(f"{base}/v1/projects/{gcp.project}")
        _check(reply, f"reading the number of project {gcp.project}")
        cached = gcp._project_number = str(reply.json()["projectNumber"])
    return cached


def _owned(gcp: GCP, name: str, reply) -> str:
    """``name`` if the bucket of ``reply`` (buckets.get) is this project's, else refuse it."""
    if reply.status_code == 403:
        raise _foreign_bucket(gcp, name)
    _check(reply, f"reading bucket {name}")
    if str(reply.json().get("projectNumber")) != project_number(gcp):
        raise _foreign_bucket(gcp, name)
    checked = gcp.__dict__.setdefault("_owned_buckets", set())
    checked.add(name)
    return name


def ensure_bucket(gcp: GCP) -> str:
    """Create the artifact bucket (uniform access, no public access) if it does not exist.

    Its name is predictable, so another project could create it first and wait for nodes to run
    what it puts there: whether it is new or not, the bucket is used only if this project owns
    it (its ``projectNumber``), else :class:`ForeignBucketError`.
    """
    name = bucket_name(gcp)
    if name in getattr(gcp, "_owned_buckets", ()):
        return name
    reply = gcp.http.get(gcp.storage_url(f"b/{name}"))
    if reply.status_code == 404:
        body = {
            "name": name,
            "location": gcp.region,
            "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True}, "publicAccessPrevention": "enforced"},
            "lifecycle": LOGS_LIFECYCLE,
        }
        reply = gcp.http.post(gcp.storage_url("b") + f"?project={gcp.project}", json=body)
        if reply.status_code == 409:  # made meanwhile, by us or by someone else: whose is it?
            reply = gcp.http.get(gcp.storage_url(f"b/{name}"))
        else:
            _check(reply, f"creating bucket {name}")
    _owned(gcp, name, reply)
    if LOGS_RULE not in reply.json().get("lifecycle", {}).get("rule", []):
        # A bucket made before logs expired: add the rule, keeping any of the owner's own.
        rules = [*reply.json().get("lifecycle", {}).get("rule", []), LOGS_RULE]
        _check(gcp.http.patch(gcp.storage_url(f"b/{name}"), json={"lifecycle": {"rule": rules}}), f"setting the lifecycle of bucket {name}")
    return name


def existing_bucket(gcp: GCP) -> str | None:
    """The artifact bucket if it exists and this project owns it; None if there is none
    (reading logs or deleting claims creates nothing); :class:`ForeignBucketError` if another
    project owns it."""
    name = bucket_name(gcp)
    if name in getattr(gcp, "_owned_buckets", ()):
        return name
    reply = gcp.http.get(gcp.storage_url(f"b/{name}"))
    if reply.status_code == 404:
        return None
    return _owned(gcp, name, reply)


def object_url(gcp: GCP, bucket: str, key: str) -> str:
    return gcp.storage_url(f"b/{bucket}/o/{urllib.parse.quote(key, safe='')}")


def read(gcp: GCP, bucket: str, key: str) -> tuple[bytes, str] | None:
    """The object's bytes and generation, None if there is none."""
    meta = gcp.http.get(object_url(gcp, bucket, key))
    if meta.status_code == 404:
        return None
    _check(meta, f"reading {key}")
    data = gcp.http.get(object_url(gcp, bucket, key) + "?alt=media")
    if data.status_code == 404:
        return None
    _check(data, f"reading {key}")
    return data.content, meta.json()["generation"]


def write(gcp: GCP, bucket: str, key: str, data: bytes, if_generation: str | None = None) -> bool:
    """Upload; with ``if_generation`` ("0": only if absent) False when the precondition failed."""
    query = {"uploadType": "media", "name": key}
    if if_generation is not None:
        query["ifGenerationMatch"] = if_generation
    url = gcp.storage_url(f"b/{bucket}/o", upload=True) + "?" + urllib.parse.urlencode(query)
    reply = gcp.http.post(url, data=data, headers={"Content-Type": "application/octet-stream"})
    if reply.status_code == 412:
        return False
    _check(reply, f"writing {key}")
    return True


def delete(gcp: GCP, bucket: str, key: str, if_generation: str | None = None) -> None:
    url = object_url(gcp, bucket, key) + (f"?ifGenerationMatch={if_generation}" if if_generation else "")
    reply = gcp.http.delete(url)
    if reply.status_code not in (404, 412):
        _check(reply, f"deleting {key}")


def listing(gcp: GCP, bucket: str, prefix: str) -> list[str]:
    names, token = [], None
    while True:
        query = {"prefix": prefix, **({"pageToken": token} if token else {})}
        reply = gcp.http.get(gcp.storage_url(f"b/{bucket}/o") + "?" + urllib.parse.urlencode(query))
        if reply.status_code == 404:
            return names
        _check(reply, f"listing {prefix}")
        page = reply.json()
        names += [item["name"] for item in page.get("items", [])]
        token = page.get("nextPageToken")
        if not token:
            return names


def upload_once(gcp: GCP, bucket: str, key: str, data: bytes) -> StoredObject:
    """Make ``key`` hold exactly ``data`` (kept if its content is already that)."""
    digest = hashlib.sha256(data).hexdigest()
    current = read(gcp, bucket, key)
    if current is None or hashlib.sha256(current[0]).hexdigest() != digest:
        write(gcp, bucket, key, data)
    return StoredObject(bucket, key, digest)


def log_prefix(cluster_label: str) -> str:
    return f"logs/{cluster_label}/"


def read_logs(gcp: GCP, bucket: str, cluster_label: str, tail: int | None) -> dict[str, str]:
    logs = {}
    for key in listing(gcp, bucket, log_prefix(cluster_label)):
        found = read(gcp, bucket, key)
        if found is None:
            continue
        text = found[0].decode(errors="replace")
        if tail:
            text = "\n".join(text.splitlines()[-tail:])
        logs[key.rsplit("/", 1)[-1].removesuffix(".log")] = text
    return logs


def delete_prefix(gcp: GCP, bucket: str, prefix: str) -> int:
    keys = listing(gcp, bucket, prefix)
    for key in keys:
        delete(gcp, bucket, key)
    return len(keys)


# -- Secret Manager ---------------------------------------------------------------------------
def secret_id(cluster_label: str, what: str) -> str:
    return f"coiled-{cluster_label}-{what}"


def put_secret(gcp: GCP, secret: str, value: str, labels: dict[str, str]) -> None:
    """Create secret ``secret`` with one version holding ``value``."""
    body = {"replication": {"automatic": {}}, "labels": labels}
    reply = gcp.http.post(gcp.secrets_url("secrets") + f"?secretId={secret}", json=body)
    if reply.status_code != 409:
        _check(reply, f"creating secret {secret}")
    payload = {"payload": {"data": base64.b64encode(value.encode()).decode()}}
    _check(gcp.http.post(gcp.secrets_url(f"secrets/{secret}:addVersion"), json=payload), f"storing secret {secret}")


def get_secret(gcp: GCP, secret: str) -> str | None:
    reply = gcp.http.get(gcp.secrets_url(f"secrets/{secret}/versions/latest:access"))
    if reply.status_code == 404:
        return None
    _check(reply, f"reading secret {secret}")
    return base64.b64decode(reply.json()["payload"]["data"]).decode()


def delete_secret(gcp: GCP, secret: str) -> bool:
    reply = gcp.http.delete(gcp.secrets_url(f"secrets/{secret}"))
    if reply.status_code == 404:
        return False
    _check(reply, f"deleting secret {secret}")
    return True


def labelled_secrets(gcp: GCP, label: str, value: str | None = None) -> list[str]:
    """Secret ids labelled ``label`` (= ``value`` if given)."""
    found, token = [], None
    term = f"labels.{label}={value}" if value else f"labels.{label}:*"
    while True:
        query = {"filter": term, **({"pageToken": token} if token else {})}
        reply = gcp.http.get(gcp.secrets_url("secrets") + "?" + urllib.parse.urlencode(query))
        _check(reply, "listing secrets")
        page = reply.json()
        found += [(s["name"].rsplit("/", 1)[-1], s.get("labels", {})) for s in page.get("secrets", [])]
        token = page.get("nextPageToken")
        if not token:
            break
    return [name for name, labels in found if label in labels and (value is None or labels[label] == value)]


def json_secret(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"))
