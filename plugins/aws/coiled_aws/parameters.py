"""Cluster secrets and records in SSM Parameter Store, under ``/coiled/<cluster>/``.

Private keys never travel in user data (which DescribeInstanceAttribute shows to other
principals): they are SecureStrings under ``/coiled/<cluster>/tls/``, read by the node with its
own role.
"""

from __future__ import annotations

from coiled_aws.session import AWS

PARAMETER_PREFIX = "/coiled"


def spec_parameter(cluster: str) -> str:
    return f"{PARAMETER_PREFIX}/{cluster}/spec"


def claim_parameter(cluster: str) -> str:
    return f"{PARAMETER_PREFIX}/{cluster}/claim"


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
