"""The artifact bucket: what nodes download at boot (the agent bundle) and upload (their logs).

- The node agent's code (coiled-core is not on a package index) is uploaded once per content hash
  to the artifact bucket ``coiled-artifacts-<account>-<region>``; a node downloads it through a
  presigned URL in its user data, so it needs no AWS tooling to bootstrap.
- Nodes upload their logs to ``logs/<cluster>/<instance-id>.log`` in that bucket, so logs outlive
  the machines.
- Secrets live in SSM Parameter Store (:mod:`coiled_aws.parameters`) and the node role in IAM
  (:mod:`coiled_aws.iam`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coiled_aws.session import AWS

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
