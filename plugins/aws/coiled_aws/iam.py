"""The node roles: per cluster, account and region, one IAM role and instance profile for the
scheduler and one for the workers, each with least privilege.

IAM is global to an account while clusters live in a region, so a role's name is derived from the
account, the region and the cluster's name (a hash: IAM names are at most 64 characters), behind
the recognisable prefix :data:`ROLE_PREFIX` that the client policy scopes its IAM permissions to
(see ``client-policy.json``). Two clusters named alike in two regions get different roles.

A node of a role may read only its role's secrets in SSM (so a worker cannot read the
scheduler's private key), fetch the agent bundle and write its cluster's logs in the artifact
bucket (only if this account owns it), read environment packs and write only under its cluster's
build (``envs/*/builds/<build id>/``, never ``pins/``: the client pins the packs nodes may run),
and, with a customer-managed KMS key, decrypt through SSM with it. The scheduler may also delete its cluster's secrets when the cluster ends. Nodes never
call EC2: they power themselves off and EC2 terminates them (shutdown behaviour ``terminate``).

Every role is created with a permissions boundary (the ``permissions_boundary`` option, default
the managed policy :data:`BOUNDARY_NAME`, see :func:`boundary_policy`), and the client policy
lets a client create roles only with it: whatever inline policy a client writes, a node role can
never do more than the boundary allows. An administrator creates the default boundary once with
``python -m coiled_aws.iam`` (a client allowed to create it does so on first use).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from coiled_aws.artifacts import bucket_name
from coiled_aws.parameters import NODE_ROLES, role_secrets_path, secrets_prefix
from coiled_aws.session import AWS

logger = logging.getLogger("coiled_aws")

#: Every role and instance profile this backend creates is named so (the client policy's scope).
ROLE_PREFIX = "coiled-node-"
#: Name of the inline policy of each node role.
POLICY_NAME = "coiled-node"
#: The managed policy attached as every node role's permissions boundary, by default.
BOUNDARY_NAME = "coiled-node-boundary"

_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def node_role_name(aws: AWS, cluster: str, role: str) -> str:
    """The role (and instance profile) of ``cluster``'s ``role`` nodes, in ``aws``'s account and
    region: ``coiled-node-<20 hex digits>-<role>`` (at most 42 characters)."""
    if role not in NODE_ROLES:
        raise ValueError(f"unknown node role {role!r}; expected one of {', '.join(NODE_ROLES)}")
    digest = hashlib.sha256(f"{aws.account_id}/{aws.region}/{cluster}".encode()).hexdigest()[:20]
    return f"{ROLE_PREFIX}{digest}-{role}"


def _parameter_arn(aws: AWS, path: str) -> str:
    return f"arn:{aws.partition}:ssm:{aws.region}:{aws.account_id}:parameter{path}"


def node_policy(aws: AWS, cluster: str, role: str, kms_key_arn: str | None = None, build_id: str = "") -> dict[str, Any]:
    """The least privilege a ``role`` node of ``cluster`` needs (see the module docstring);
    ``build_id``: the cluster's build, the only part of ``envs/`` its nodes may write."""
    own = role_secrets_path(cluster, role)
    bucket = f"arn:{aws.partition}:s3:::{bucket_name(aws)}"
    # Only if this account owns the bucket: a bucket of the same name elsewhere is not ours.
    this_account = {"StringEquals": {"s3:ResourceAccount": aws.account_id}}
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadOwnRoleSecrets",
            "Effect": "Allow",
            "Action": ["ssm:GetParametersByPath", "ssm:GetParameter", "ssm:GetParameters"],
            # The path itself (GetParametersByPath) and what is under it: nothing of other roles.
            "Resource": [_parameter_arn(aws, own), _parameter_arn(aws, f"{own}/*")],
        },
        {
            "Sid": "ReadAgentBundle",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [f"{bucket}/agent/*"],
            "Condition": this_account,
        },
        {
            "Sid": "WriteOwnLogs",
            "Effect": "Allow",
            "Action": ["s3:PutObject"],
            "Resource": [f"{bucket}/logs/{cluster}/*"],
            "Condition": this_account,
        },
        {
            # Packs are fetched by every later node of any cluster of the account, but run only
            # if the client pinned their sha256 (coiled_core.node.envpack); pins/ is the client's.
            "Sid": "ReadEnvironmentPacks",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [f"{bucket}/envs/*"],
            "Condition": this_account,
        },
    ]
    if build_id:
        statements.append(
            {
                # A node shares what it builds with its own cluster's nodes only.
                "Sid": "WriteOwnBuild",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [f"{bucket}/envs/*/builds/{build_id}/*"],
                "Condition": this_account,
            }
        )
    if role == "scheduler":
        statements.append(
            {
                # The cluster's end is the scheduler's: it deletes every role's secrets then.
                "Sid": "DeleteClusterSecretsOnEnd",
                "Effect": "Allow",
                "Action": ["ssm:DeleteParameter", "ssm:DeleteParameters"],
                "Resource": [_parameter_arn(aws, f"{secrets_prefix(cluster)}/*")],
            }
        )
    if kms_key_arn:
        statements.append(
            {
                "Sid": "DecryptOwnSecretsThroughSSM",
                "Effect": "Allow",
                "Action": ["kms:Decrypt"],
                "Resource": [kms_key_arn],
                "Condition": {
                    "StringEquals": {"kms:ViaService": f"ssm.{aws.region}.amazonaws.com"},
                    # SSM names the parameter in the encryption context of every SecureString.
                    "StringLike": {"kms:EncryptionContext:PARAMETER_ARN": _parameter_arn(aws, f"{own}/*")},
                },
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def shared_node_policy(aws: AWS) -> dict[str, Any]:
    """What the role of a pre-created ``iam_instance_profile`` needs, for every cluster of this
    account and region: every node role's permissions at once (its scheduler and workers share
    it, so a worker can read the scheduler's key: the backend's own roles keep them apart)."""
    partition, region, account = aws.partition, aws.region, aws.account_id
    secrets = f"arn:{partition}:ssm:{region}:{account}:parameter/coiled/*/secrets"
    bucket = f"arn:{partition}:s3:::{bucket_name(aws)}"
    this_account = {"StringEquals": {"s3:ResourceAccount": account}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ClusterSecrets",
                "Effect": "Allow",
                "Action": [
                    "ssm:GetParametersByPath",
                    "ssm:GetParameter",
                    "ssm:GetParameters",
                    "ssm:DeleteParameter",
                    "ssm:DeleteParameters",
                ],
                "Resource": [f"{secrets}/*"],
            },
            {
                "Sid": "ReadAgentBundle",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"{bucket}/agent/*"],
                "Condition": this_account,
            },
            {
                "Sid": "WriteLogs",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [f"{bucket}/logs/*"],
                "Condition": this_account,
            },
            {
                "Sid": "ReadEnvironmentPacks",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"{bucket}/envs/*"],
                "Condition": this_account,
            },
            {
                # Shared by every cluster: a node may write another cluster's build, so pins
                # (which no node may write) are what keep packs trusted.
                "Sid": "WriteBuilds",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [f"{bucket}/envs/*/builds/*"],
                "Condition": this_account,
            },
            {
                "Sid": "DecryptThroughSSM",
                "Effect": "Allow",
                "Action": ["kms:Decrypt"],
                "Resource": "*",
                "Condition": {"StringEquals": {"kms:ViaService": f"ssm.{region}.amazonaws.com"}},
            },
        ],
    }


def boundary_policy(aws: AWS) -> dict[str, Any]:
    """The most any node role of this account may do, whatever its inline policy says: read and
    delete cluster secrets, fetch and write artifacts in this account's artifact buckets, and
    decrypt only through SSM."""
    account, partition = aws.account_id, aws.partition
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ClusterSecrets",
                "Effect": "Allow",
                "Action": [
                    "ssm:GetParametersByPath",
                    "ssm:GetParameter",
                    "ssm:GetParameters",
                    "ssm:DeleteParameter",
                    "ssm:DeleteParameters",
                ],
                "Resource": [f"arn:{partition}:ssm:*:{account}:parameter/coiled/*"],
            },
            {
                "Sid": "ReadArtifacts",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:{partition}:s3:::coiled-artifacts-{account}-*/*"],
                "Condition": {"StringEquals": {"s3:ResourceAccount": account}},
            },
            {
                # Logs and builds only: never the agent's code nor the client's pins of packs.
                "Sid": "WriteLogsAndBuilds",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [
                    f"arn:{partition}:s3:::coiled-artifacts-{account}-*/logs/*",
                    f"arn:{partition}:s3:::coiled-artifacts-{account}-*/envs/*/builds/*",
                ],
                "Condition": {"StringEquals": {"s3:ResourceAccount": account}},
            },
            {
                "Sid": "DecryptThroughSSM",
                "Effect": "Allow",
                "Action": ["kms:Decrypt"],
                "Resource": "*",
                "Condition": {"StringLike": {"kms:ViaService": "ssm.*.amazonaws.com"}},
            },
        ],
    }


def boundary_arn(aws: AWS, boundary: str | None = None) -> str:
    """The ARN of the permissions boundary ``boundary`` (a name or ARN; default :data:`BOUNDARY_NAME`)."""
    if boundary and boundary.startswith("arn:"):
        return boundary
    return f"arn:{aws.partition}:iam::{aws.account_id}:policy/{boundary or BOUNDARY_NAME}"


def find_boundary(aws: AWS, boundary: str | None = None) -> str | None:
    """The ARN of the permissions boundary if it exists; None if it is the default one and does
    not exist yet (:func:`ensure_boundary` makes it). Creates nothing: the check before anything
    exists.

    Raises ValueError naming ``permissions_boundary`` if a given boundary does not exist, or if
    the boundary cannot be read.
    """
    from botocore.exceptions import ClientError

    arn = boundary_arn(aws, boundary)
    try:
        aws.client("iam").get_policy(PolicyArn=arn)
        return arn
    except ClientError as e:
        if _error_code(e) != "NoSuchEntity":
            raise ValueError(f"permissions_boundary {arn!r} cannot be read ({e})") from e
    if boundary and arn != boundary_arn(aws):
        raise ValueError(f"permissions_boundary {arn!r} does not exist; create it, or leave the option out")
    return None


def ensure_boundary(aws: AWS, boundary: str | None = None) -> str:
    """Check that the permissions boundary exists, creating the default one if it does not (and
    the caller may); return its ARN. Never changes an existing policy.

    Raises ValueError naming ``permissions_boundary`` if it does not exist and cannot be made.
    """
    from botocore.exceptions import ClientError

    found = find_boundary(aws, boundary)
    if found is not None:
        return found
    iam = aws.client("iam")
    arn = boundary_arn(aws, boundary)
    try:
        iam.create_policy(
            PolicyName=BOUNDARY_NAME,
            PolicyDocument=json.dumps(boundary_policy(aws)),
            Description="The most a coiled node role may do (the permissions boundary of every node role)",
        )
    except ClientError as e:
        if _error_code(e) == "EntityAlreadyExists":  # made by another client meanwhile
            return arn
        raise ValueError(
            f"permissions_boundary {arn!r} does not exist and could not be created ({e}); an administrator "
            "creates it once with: python -m coiled_aws.iam"
        ) from e
    return arn


def _error_code(error: Any) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _create_role_and_profile(
    aws: AWS, cluster: str, role: str, tags: list[dict], kms_key_arn: str | None, boundary: str, build_id: str = ""
) -> str:
    from botocore.exceptions import ClientError

    iam = aws.client("iam")
    name = node_role_name(aws, cluster, role)
    try:
        iam.get_role(RoleName=name)
    except ClientError as e:
        if _error_code(e) != "NoSuchEntity":
            raise
        iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(_TRUST),
            Description=f"{role} nodes of Dask cluster {cluster} in {aws.region}",
            PermissionsBoundary=boundary,
            Tags=tags,
        )
    policy = node_policy(aws, cluster, role, kms_key_arn, build_id)
    iam.put_role_policy(RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except ClientError as e:
        if _error_code(e) != "NoSuchEntity":
            raise
        profile = iam.create_instance_profile(InstanceProfileName=name, Tags=tags)["InstanceProfile"]
    if not any(r["RoleName"] == name for r in profile.get("Roles", [])):
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name


def create_node_profiles(
    aws: AWS, cluster: str, tags: list[dict], boundary: str, kms_key_arn: str | None = None, build_id: str = ""
) -> dict[str, str]:
    """Create (idempotently) the cluster's node roles, with the permissions boundary ``boundary``
    (an ARN, see :func:`ensure_boundary`), and their instance profiles; return the profile name of
    each node role (``{"scheduler": ..., "worker": ...}``). ``build_id``: the cluster's build
    (see :func:`node_policy`)."""
    return {role: _create_role_and_profile(aws, cluster, role, tags, kms_key_arn, boundary, build_id) for role in NODE_ROLES}


def _delete_quietly(call: Any, what: str, **kwargs: Any) -> bool:
    """Make one IAM deletion; False if there was nothing to delete (or it may not be deleted)."""
    from botocore.exceptions import ClientError

    try:
        call(**kwargs)
        return True
    except ClientError as e:
        if _error_code(e) != "NoSuchEntity":
            # A client allowed only to pass a pre-created profile may not touch roles: not ours.
            logger.warning("could not delete %s: %s", what, e)
        return False


def delete_node_profiles(aws: AWS, cluster: str) -> bool:
    """Delete the cluster's node roles and instance profiles; False if there were none."""
    iam = aws.client("iam")
    found = False
    for role in NODE_ROLES:
        name = node_role_name(aws, cluster, role)
        profile = {"InstanceProfileName": name}
        _delete_quietly(iam.remove_role_from_instance_profile, f"role {name} from its profile", RoleName=name, **profile)
        found |= _delete_quietly(iam.delete_instance_profile, f"instance profile {name}", **profile)
        policy = {"RoleName": name, "PolicyName": POLICY_NAME}
        found |= _delete_quietly(iam.delete_role_policy, f"policy of role {name}", **policy)
        found |= _delete_quietly(iam.delete_role, f"role {name}", RoleName=name)
    return found


def main(argv: list[str] | None = None) -> int:
    """``python -m coiled_aws.iam``: create the default permissions boundary (an administrator's
    one-time step, for clients that may not create it) and print its ARN; or print a policy
    document for this account and region: ``--print boundary`` or ``--print node-policy`` (the
    policy of a pre-created ``iam_instance_profile``'s role)."""
    import argparse

    from coiled_aws.options import AWSOptions

    parser = argparse.ArgumentParser(prog="python -m coiled_aws.iam", description=main.__doc__)
    parser.add_argument("--print", choices=["boundary", "node-policy"], help="print a policy document and exit")
    parser.add_argument("--region", help="the clusters' region (default: boto3's)")
    parser.add_argument("--endpoint-url", help="an EC2-compatible endpoint instead of AWS")
    args = parser.parse_args(argv)
    aws = AWS(AWSOptions(region=args.region, endpoint_url=args.endpoint_url))
    if args.print:
        document = boundary_policy(aws) if args.print == "boundary" else shared_node_policy(aws)
        print(json.dumps(document, indent=2))
        return 0
    print(ensure_boundary(aws))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
