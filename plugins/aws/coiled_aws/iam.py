"""The node role: one IAM role and instance profile per cluster, with least privilege."""

from __future__ import annotations

import hashlib
import json

from coiled_aws.artifacts import bucket_name
from coiled_aws.parameters import tls_prefix
from coiled_aws.session import AWS


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
