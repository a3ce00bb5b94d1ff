"""The AWS backend's store program: a node's access to the artifact bucket before its software
environment exists (see :mod:`coiled_core.node.bootstrap` for the commands and exit codes).

It runs on the node with its own instance role, in the boot tools venv (boto3). Every call names
the account that must own the bucket (``ExpectedBucketOwner``), so a bucket of the same name in
another account is never read nor written. Settings (JSON in ``COILED_STORE``): ``bucket``,
``region``, ``owner``.
"""

import json
import os
import sys

import boto3
from botocore.exceptions import ClientError

MISSING, EXISTS = 2, 3


def main(argv):
    settings = json.loads(os.environ["COILED_STORE"])
    bucket, owner = settings["bucket"], settings["owner"]
    s3 = boto3.client("s3", region_name=settings["region"])
    command, args = argv[0], argv[1:]
    try:
        if command == "get":
            key, target = args
            s3.download_file(bucket, key, target, ExtraArgs={"ExpectedBucketOwner": owner})
        elif command == "put":
            path, key = args
            s3.upload_file(path, bucket, key, ExtraArgs={"ExpectedBucketOwner": owner})
        elif command == "create":
            path, key = args
            with open(path, "rb") as body:
                # If-None-Match: S3 writes the object only if no object has this key.
                s3.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", ExpectedBucketOwner=owner)
        else:
            print(f"unknown command {command!r}", file=sys.stderr)
            return 1
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if command == "get" and code in ("404", "NoSuchKey", "NotFound"):
            return MISSING
        if command == "create" and code in ("412", "PreconditionFailed", "ConditionalRequestConflict"):
            return EXISTS
        print(f"s3 {command} {args[-1] if command != 'get' else args[0]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
