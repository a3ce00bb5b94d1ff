"""The artifact bucket: what nodes download at boot (the agent bundle) and upload (their logs).

- The node agent's code (coiled-core is not on a package index) is uploaded once per content hash
  to the artifact bucket ``coiled-artifacts-<account>-<region>`` under ``agent/``. A node fetches
  it with its own instance role (no URL or key of the client's is in its user data) and runs it
  only if its sha256 is the one in its user data. What else a node runs from the client goes
  there the same way, named by its sha256: the client's local code
  (``agent/code-<sha256>.zip``, ``include_local_code``) and ``post_build`` scripts too long to
  go inline (``agent/post-build-<sha256>.sh``).
- Nodes upload their logs to ``logs/<cluster>/<instance-id>.log`` in that bucket, so logs outlive
  the machines, for :data:`LOG_RETENTION_DAYS` (a lifecycle rule of the bucket deletes them).
- Secrets live in SSM Parameter Store (:mod:`coiled_aws.parameters`) and the node role in IAM
  (:mod:`coiled_aws.iam`).

The bucket's name is predictable, so another account could create it first and wait for nodes to
run what it puts there. Every S3 call here, the nodes' included, names the account that must own
the bucket (``ExpectedBucketOwner``); S3 refuses the call if another account owns it, and a bucket
owned by another account is a :class:`ForeignBucketError` (a
:class:`~coiled_core.errors.ProvisionError`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coiled_core.backend import ProvisionError

from coiled_aws.session import AWS


@dataclass(frozen=True)
class StoredObject:
    """An object in the artifact bucket, and what a node needs to fetch and check it."""

    bucket: str
    key: str
    #: hex sha256 of its content, as the client uploaded it.
    sha256: str
    #: The account that owns the bucket (``ExpectedBucketOwner`` of every call).
    owner: str
    region: str


#: Node logs are deleted this many days after their last upload (the bucket's lifecycle rule).
LOG_RETENTION_DAYS = 30
#: The id of that lifecycle rule.
LOG_RULE_ID = "coiled-node-logs-expire"


class ForeignBucketError(ProvisionError):
    """The artifact bucket exists but this account does not own it (or may not read it)."""


def bucket_name(aws: AWS) -> str:
    return f"coiled-artifacts-{aws.account_id}-{aws.region}"


def _foreign_bucket(name: str, account: str) -> ForeignBucketError:
    return ForeignBucketError(
        f"the artifact bucket {name!r} exists but is not owned by AWS account {account} (or this account may "
        "not read it): another account may have taken its name. Nodes would run code from it, so it is not used; "
        "delete it if it is yours, or ask your administrator"
    )


def ensure_bucket(aws: AWS) -> str:
    """Create the artifact bucket if it does not exist (idempotent); return its name.

    Raises :class:`ProvisionError` if the bucket exists and another account owns it.
    """
    from botocore.exceptions import ClientError

    s3 = aws.client("s3")
    name = bucket_name(aws)
    try:
        s3.head_bucket(Bucket=name, ExpectedBucketOwner=aws.account_id)
        _expire_logs(s3, name, aws.account_id)
        return name
    except ClientError as e:
        # S3 answers 403 for a bucket another account owns (ExpectedBucketOwner), 404 for none.
        if _status(e) == 403:
            raise _foreign_bucket(name, aws.account_id) from e
        if _status(e) != 404:
            raise
    kwargs: dict[str, Any] = {"Bucket": name}
    if aws.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as e:
        code = e.response["Error"]["Code"]
        if code == "BucketAlreadyExists":  # someone else created it since we looked
            raise _foreign_bucket(name, aws.account_id) from e
        if code != "BucketAlreadyOwnedByYou":
            raise
    s3.put_public_access_block(
        Bucket=name,
        ExpectedBucketOwner=aws.account_id,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    _expire_logs(s3, name, aws.account_id)
    return name


def _expire_logs(s3: Any, bucket: str, owner: str) -> None:
    """Add the rule that deletes node logs :data:`LOG_RETENTION_DAYS` after they were last
    written (they hold whatever the user's code printed) to the bucket's lifecycle, keeping the
    rules already there; nothing if it is there."""
    from botocore.exceptions import ClientError

    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket, ExpectedBucketOwner=owner).get("Rules", [])
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    if any(rule.get("ID") == LOG_RULE_ID for rule in rules):
        return
    rule = {
        "ID": LOG_RULE_ID,
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "Expiration": {"Days": LOG_RETENTION_DAYS},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, ExpectedBucketOwner=owner, LifecycleConfiguration={"Rules": [*rules, rule]})


def _status(error: Any) -> int | None:
    return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stored_sha256(s3: Any, bucket: str, key: str, owner: str) -> str | None:
    """sha256 of the object's content as S3 holds it now, None if there is no such object."""
    from botocore.exceptions import ClientError

    try:
        reply = s3.get_object(Bucket=bucket, Key=key, ExpectedBucketOwner=owner)
    except ClientError as e:
        if _status(e) == 403:
            raise _foreign_bucket(bucket, owner) from e
        if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    return _sha256(reply["Body"].read())


def upload_once(aws: AWS, bucket: str, key: str, path: Path) -> StoredObject:
    """Make ``key`` hold exactly the bytes of ``path``; return where it is and its sha256.

    An object already at ``key`` is kept only if its content is the same (checked by sha256, not
    trusted for existing); otherwise it is replaced.
    """
    return upload_bytes_once(aws, bucket, key, Path(path).read_bytes())


def content_key(prefix: str, data: bytes, suffix: str) -> str:
    """``<prefix><sha256 of data><suffix>``: a key named by its content, shared by every cluster
    that ships the same bytes."""
    return f"{prefix}{_sha256(data)}{suffix}"


def upload_bytes_once(aws: AWS, bucket: str, key: str, data: bytes) -> StoredObject:
    """:func:`upload_once` for bytes in memory."""
    s3 = aws.client("s3")
    digest = _sha256(data)
    if _stored_sha256(s3, bucket, key, aws.account_id) != digest:
        s3.put_object(Bucket=bucket, Key=key, Body=data, ExpectedBucketOwner=aws.account_id)
    return StoredObject(bucket=bucket, key=key, sha256=digest, owner=aws.account_id, region=aws.region)


def log_prefix(cluster: str) -> str:
    """Where the logs of ``cluster``'s nodes go (a node role may write there and nowhere else)."""
    return f"logs/{cluster}/"


def log_key(cluster: str, instance_id: str) -> str:
    return f"{log_prefix(cluster)}{instance_id}.log"


def read_logs(aws: AWS, bucket: str, cluster: str, tail: int | None) -> dict[str, str]:
    """The uploaded logs of every node of ``cluster``, by instance id (none if there is no bucket).

    Raises :class:`ForeignBucketError` if another account owns the bucket.
    """
    from botocore.exceptions import ClientError

    s3 = aws.client("s3")
    logs: dict[str, str] = {}
    owner = aws.account_id
    try:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"logs/{cluster}/", ExpectedBucketOwner=owner)
    except ClientError as e:
        if _status(e) == 403:
            raise _foreign_bucket(bucket, owner) from e
        if e.response["Error"]["Code"] == "NoSuchBucket":
            return logs
        raise
    for item in listing.get("Contents", []):
        reply = s3.get_object(Bucket=bucket, Key=item["Key"], ExpectedBucketOwner=owner)
        text = reply["Body"].read().decode(errors="replace")
        if tail:
            text = "\n".join(text.splitlines()[-tail:])
        logs[Path(item["Key"]).stem] = text
    return logs


def delete_logs(aws: AWS, bucket: str, cluster: str) -> None:
    s3 = aws.client("s3")
    owner = aws.account_id
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"logs/{cluster}/", ExpectedBucketOwner=owner)
    keys = [{"Key": item["Key"]} for item in listing.get("Contents", [])]
    if keys:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": keys}, ExpectedBucketOwner=owner)


class ClientStore:
    """The client's own access to the artifact bucket, with the store program's commands
    (``get``, ``put``, ``create``), for what the core reads and writes from the client: the pins
    of environment packs (``pins/``, which no node role may write)."""

    def __init__(self, aws: AWS, bucket: str):
        self.s3, self.bucket, self.owner = aws.client("s3"), bucket, aws.account_id

    def get(self, key: str, target: Path) -> bool:
        """Download ``key`` to ``target``; False if there is no such object."""
        from botocore.exceptions import ClientError

        try:
            reply = self.s3.get_object(Bucket=self.bucket, Key=key, ExpectedBucketOwner=self.owner)
        except ClientError as e:
            if _status(e) == 403:
                raise _foreign_bucket(self.bucket, self.owner) from e
            if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return False
            raise
        Path(target).write_bytes(reply["Body"].read())
        return True

    def put(self, path: Path, key: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=Path(path).read_bytes(), ExpectedBucketOwner=self.owner)

    def create(self, path: Path, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=Path(path).read_bytes(), IfNoneMatch="*", ExpectedBucketOwner=self.owner)
            return True
        except ClientError as e:
            if e.response["Error"]["Code"] in ("412", "PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
