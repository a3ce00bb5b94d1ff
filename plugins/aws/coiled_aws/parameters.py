"""Cluster secrets and records in SSM Parameter Store, under ``/coiled/<cluster>/``.

- ``/coiled/<cluster>/spec``: the cluster's spec (``describe`` rebuilds the record from it). It
  holds ``environ``, so it is a SecureString.
- ``/coiled/<cluster>/claim``: the atomic name claim (a plain String: no secret in it).
- ``/coiled/<cluster>/secrets/<role>/<key>``: what the nodes of one role read with their own
  role (see :mod:`coiled_aws.iam`), as SecureStrings: that role's TLS material (``ca_cert``,
  ``<role>_cert``, ``<role>_key``) and the cluster's ``environ`` (JSON). A worker node may read
  only ``secrets/worker``: the scheduler's private key is not in reach of a worker.

Secrets never travel in user data, which DescribeInstanceAttribute shows to other principals.

Who can decrypt them: SecureStrings are encrypted with the account's default ``aws/ssm`` key
unless ``kms_key_id`` names a customer-managed key. With the default key, anyone allowed to read
the parameters decrypts them; with a customer key, only the principals its key policy (or their
IAM policies, where the key policy delegates to IAM) allow ``kms:Decrypt`` (see the README).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from coiled_aws.session import AWS

PARAMETER_PREFIX = "/coiled"
#: The node roles that get secrets (and IAM roles) of their own.
NODE_ROLES = ("scheduler", "worker")
#: Key of the cluster's ``environ`` (JSON) among a role's secrets.
ENVIRON = "environ"
#: SSM's standard tier holds values up to 4 KB; the advanced tier up to 8 KB.
STANDARD_TIER_BYTES = 4096
ADVANCED_TIER_BYTES = 8192
#: DeleteParameters takes at most this many names per call.
DELETE_BATCH = 10


def cluster_prefix(cluster: str) -> str:
    return f"{PARAMETER_PREFIX}/{cluster}"


def spec_parameter(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}/spec"


def claim_parameter(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}/claim"


def secrets_prefix(cluster: str) -> str:
    """Where every node role's secrets of ``cluster`` are."""
    return f"{cluster_prefix(cluster)}/secrets"


def role_secrets_path(cluster: str, role: str) -> str:
    """Where the nodes of ``role`` (scheduler or worker) find their secrets."""
    if role not in NODE_ROLES:
        raise ValueError(f"unknown node role {role!r}; expected one of {', '.join(NODE_ROLES)}")
    return f"{secrets_prefix(cluster)}/{role}"


def secret_keys(role: str, tls: bool, environ: bool) -> list[str]:
    """The names of the secrets a ``role`` node gets (under :func:`role_secrets_path`)."""
    keys = ["ca_cert", f"{role}_cert", f"{role}_key"] if tls else []
    return keys + ([ENVIRON] if environ else [])


def role_secrets(role: str, tls_material: Mapping[str, str] | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The values a ``role`` node gets: its TLS material (``ClusterTLS.to_node_config(role)``,
    nothing of another role) and ``environ``."""
    values = dict(tls_material or {})
    if set(values) - set(secret_keys(role, True, False)):
        raise ValueError(f"TLS material for {role} nodes holds another role's keys: {sorted(values)}")
    if environ:
        values[ENVIRON] = json.dumps(dict(environ), separators=(",", ":"))
    return values


def check_size(what: str, value: str) -> None:
    """Raise ValueError, naming ``what``, if ``value`` is too large for one SSM parameter."""
    size = len(value.encode())
    if size > ADVANCED_TIER_BYTES:
        raise ValueError(
            f"{what} is {size} bytes, more than the {ADVANCED_TIER_BYTES} bytes one SSM parameter holds; "
            "pass large values another way (a file in the software environment, a secrets manager)"
        )


def _tier(value: str) -> str:
    # Advanced parameters cost money: only for values the standard tier cannot hold.
    return "Standard" if len(value.encode()) <= STANDARD_TIER_BYTES else "Advanced"


def put_secure(aws: AWS, name: str, value: str, kms_key_id: str | None, tags: list[dict] | None = None) -> None:
    """Store ``value`` at ``name`` as a SecureString (encrypted with ``kms_key_id`` if given,
    else the account's ``aws/ssm`` key), overwriting what was there, and tag it."""
    ssm = aws.client("ssm")
    kwargs: dict[str, Any] = {"KeyId": kms_key_id} if kms_key_id else {}
    ssm.put_parameter(Name=name, Value=value, Type="SecureString", Tier=_tier(value), Overwrite=True, **kwargs)
    if tags:
        ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=name, Tags=tags)


def put_secrets(
    aws: AWS, cluster: str, secrets: Mapping[str, Mapping[str, str]], tags: list[dict], kms_key_id: str | None = None
) -> list[str]:
    """Store each role's secrets (``{role: {key: value}}``) under its own path; return the names."""
    names = []
    for role, values in secrets.items():
        for key, value in values.items():
            name = f"{role_secrets_path(cluster, role)}/{key}"
            put_secure(aws, name, value, kms_key_id, tags)
            names.append(name)
    return names


def _names_under(aws: AWS, path: str) -> list[str]:
    """Names of every parameter under ``path`` (recursively; values are not decrypted)."""
    pages = aws.client("ssm").get_paginator("get_parameters_by_path").paginate(Path=path, Recursive=True)
    return [p["Name"] for page in pages for p in page["Parameters"]]


def delete_names(aws: AWS, names: Iterable[str]) -> None:
    names = list(names)
    ssm = aws.client("ssm")
    for start in range(0, len(names), DELETE_BATCH):
        ssm.delete_parameters(Names=names[start : start + DELETE_BATCH])


def delete_secrets(aws: AWS, cluster: str) -> list[str]:
    """Delete every node secret of ``cluster`` (and TLS parameters of earlier versions, under
    ``/coiled/<cluster>/tls``); return their names."""
    names = _names_under(aws, secrets_prefix(cluster)) + _names_under(aws, f"{cluster_prefix(cluster)}/tls")
    delete_names(aws, names)
    return names


def clusters_with_parameters(aws: AWS) -> set[str]:
    """Names of the clusters that have any parameter under ``/coiled/`` (read without values)."""
    pages = aws.client("ssm").get_paginator("describe_parameters").paginate(
        ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": [PARAMETER_PREFIX]}]
    )
    found = set()
    for page in pages:
        for parameter in page["Parameters"]:
            parts = parameter["Name"].split("/")  # "", "coiled", <cluster>, ...
            if len(parts) > 3 and parts[1] == PARAMETER_PREFIX.strip("/"):
                found.add(parts[2])
    return found


def resolve_kms_key(aws: AWS, key_id: str) -> str:
    """The ARN of the customer-managed KMS key ``key_id`` (id, ARN, alias name or alias ARN).

    Raises ValueError naming ``kms_key_id`` if there is no such usable key: checked before
    anything is created.
    """
    from botocore.exceptions import ClientError

    try:
        key = aws.client("kms").describe_key(KeyId=key_id)["KeyMetadata"]
    except ClientError as e:
        raise ValueError(f"kms_key_id {key_id!r}: no such KMS key in {aws.region} ({e})") from e
    problems = []
    if key.get("KeyState") != "Enabled":
        problems.append(f"its state is {key.get('KeyState')}, not Enabled")
    if key.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT":
        problems.append(f"its usage is {key.get('KeyUsage')}, not ENCRYPT_DECRYPT")
    if key.get("KeySpec", key.get("CustomerMasterKeySpec", "SYMMETRIC_DEFAULT")) != "SYMMETRIC_DEFAULT":
        problems.append("it is not a symmetric key (SSM SecureStrings need SYMMETRIC_DEFAULT)")
    if problems:
        raise ValueError(f"kms_key_id {key_id!r} cannot encrypt SSM parameters: {'; '.join(problems)}")
    return key["Arn"]
