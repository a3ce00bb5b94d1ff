"""What nodes read at boot and write at exit: the artifact bucket, TLS parameters, the node role.

- The node agent's code (coiled-core is not on a package index) is uploaded once per content hash
  to the artifact bucket ``coiled-artifacts-<account>-<region>``; a node downloads it through a
  presigned URL in its user data, so it needs no AWS tooling to bootstrap.
- Nodes upload their logs to ``logs/<cluster>/<instance-id>.log`` in that bucket, so logs outlive
  the machines.
- Private keys never travel in user data (which DescribeInstanceAttribute shows to other
  principals): they are SSM Parameter Store SecureStrings under ``/coiled/<cluster>/tls/``,
  read by the node with its own role.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from coiled_aws.session import AWS

PARAMETER_PREFIX = "/coiled"
#: Presigned URLs in user data must outlive the longest boot (SigV4 allows up to 7 days).
URL_LIFETIME_SECONDS = 24 * 3600


def bucket_name(aws: AWS) -> str:
    return f"coiled-artifacts-{aws.account_id}-{aws.region}"


def ensure_bucket(aws: AWS) -> str:
    """Create the artifact bucket if it does not exist (idempotent)."""
    from botocore.exceptions import ClientError

    s3 = aws.client("s3")
    name = bucket_name(aws)
    try:
        s3.head_bucket(Bucket=name)
        return name
    except ClientError:
        pass
    kwargs: dict[str, Any] = {"Bucket": name}
    if aws.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    return name


def upload_once(aws: AWS, bucket: str, key: str, path: Path) -> str:
    """Upload ``path`` at ``key`` unless it is there already; return a presigned GET URL."""
    from botocore.exceptions import ClientError

    s3 = aws.client("s3")
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        s3.upload_file(str(path), bucket, key)
    return s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=URL_LIFETIME_SECONDS
    )


def log_key(cluster: str, instance_id: str) -> str:
    return f"logs/{cluster}/{instance_id}.log"


def read_logs(aws: AWS, bucket: str, cluster: str, tail: int | None) -> dict[str, str]:
    """The uploaded logs of every node of ``cluster``, by instance id."""
    s3 = aws.client("s3")
    logs: dict[str, str] = {}
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"logs/{cluster}/")
    for item in listing.get("Contents", []):
        text = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode(errors="replace")
        if tail:
            text = "\n".join(text.splitlines()[-tail:])
        logs[Path(item["Key"]).stem] = text
    return logs


def delete_logs(aws: AWS, bucket: str, cluster: str) -> None:
    s3 = aws.client("s3")
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"logs/{cluster}/")
    keys = [{"Key": item["Key"]} for item in listing.get("Contents", [])]
    if keys:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


# -- TLS material in SSM Parameter Store ------------------------------------------------------
def tls_prefix(cluster: str) -> str:
    return f"{PARAMETER_PREFIX}/{cluster}/tls"


def put_tls(aws: AWS, cluster: str, material: dict[str, str], tags: list[dict]) -> None:
    ssm = aws.client("ssm")
    for name, value in material.items():
        ssm.put_parameter(
            Name=f"{tls_prefix(cluster)}/{name}", Value=value, Type="SecureString", Overwrite=True
        )
        ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=f"{tls_prefix(cluster)}/{name}", Tags=tags)


def delete_tls(aws: AWS, cluster: str) -> list[str]:
    ssm = aws.client("ssm")
    names = [p["Name"] for p in ssm.get_parameters_by_path(Path=tls_prefix(cluster))["Parameters"]]
    if names:
        ssm.delete_parameters(Names=names)
    return names


# -- the node role ----------------------------------------------------------------------------
def node_role_name(cluster: str) -> str:
    """One role per cluster (IAM names are at most 64 characters, cluster names 63)."""
    return f"coiled-{hashlib.sha256(cluster.encode()).hexdigest()[:16]}"


def node_policy(aws: AWS, cluster: str) -> dict:
    """The least privilege a node of ``cluster`` needs: read that cluster's secrets and the agent
    artifacts, write that cluster's logs, and terminate only that cluster's instances (itself,
    on power-off)."""
    bucket = f"arn:aws:s3:::{bucket_name(aws)}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadOwnClusterSecrets",
                "Effect": "Allow",
                "Action": ["ssm:GetParametersByPath", "ssm:GetParameter", "ssm:GetParameters"],
                "Resource": [
                    f"arn:aws:ssm:{aws.region}:{aws.account_id}:parameter{tls_prefix(cluster)}",
                    f"arn:aws:ssm:{aws.region}:{aws.account_id}:parameter{tls_prefix(cluster)}/*",
                ],
            },
            {"Sid": "ReadAgent", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"{bucket}/agent/*"]},
            {"Sid": "WriteOwnLogs", "Effect": "Allow", "Action": ["s3:PutObject"], "Resource": [f"{bucket}/logs/{cluster}/*"]},
            {
                "Sid": "TerminateOwnCluster",
                "Effect": "Allow",
                "Action": ["ec2:TerminateInstances"],
                "Resource": "*",
                "Condition": {"StringEquals": {"ec2:ResourceTag/coiled:cluster": cluster}},
            },
        ],
    }


def create_node_profile(aws: AWS, cluster: str, tags: list[dict]) -> str:
    """Create (idempotently) the cluster's node role and instance profile; return its name."""
    from botocore.exceptions import ClientError

    iam = aws.client("iam")
    name = node_role_name(cluster)
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
    try:
        iam.get_role(RoleName=name)
    except ClientError:
        iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), Description=f"nodes of Dask cluster {cluster}", Tags=tags
        )
    iam.put_role_policy(RoleName=name, PolicyName="coiled-node", PolicyDocument=json.dumps(node_policy(aws, cluster)))
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except ClientError:
        profile = iam.create_instance_profile(InstanceProfileName=name, Tags=tags)["InstanceProfile"]
    if not any(role["RoleName"] == name for role in profile.get("Roles", [])):
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name


def delete_node_profile(aws: AWS, cluster: str) -> bool:
    """Delete the cluster's role and instance profile; False if there was none."""
    from botocore.exceptions import ClientError

    iam = aws.client("iam")
    name = node_role_name(cluster)
    found = False
    try:
        iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)
    except ClientError:
        pass
    for call, kwargs in (
        (iam.delete_instance_profile, {"InstanceProfileName": name}),
        (iam.delete_role_policy, {"RoleName": name, "PolicyName": "coiled-node"}),
        (iam.delete_role, {"RoleName": name}),
    ):
        try:
            call(**kwargs)
            found = True
        except ClientError:
            pass
    return found
