"""The AWS trust chain on the offline EC2: the artifact bucket must be this account's, and a node
runs only the agent bundle the client uploaded.

A second simulated account (``OfflineEC2.add_account``) plays the one that takes the predictable
bucket name. moto ignores ``ExpectedBucketOwner``; the simulator's gate applies it as S3 does, and
lists bucket requests that do not carry it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile

import botocore.client
import pytest
from botocore.exceptions import ClientError

from coiled_core.errors import ProvisionError
from coiled_core.plugins import load_backend
from coiled_core.spec import resolve_cluster_spec
from coiled_core.testing.contract import wait_until

from coiled_aws import artifacts
from coiled_aws.artifacts import ForeignBucketError, StoredObject
from coiled_aws.node import LogUploader
from coiled_aws.options import AWSOptions
from coiled_aws.plugin import _Boot
from coiled_aws.session import AWS

pytestmark = pytest.mark.usefixtures("offline_ec2")

REGION = "us-east-1"
OPTIONS = {"region": REGION, "allow_ingress_from": "127.0.0.1/32"}


def _spec(name, **extra):
    values = {"name": name, "n_workers": 1, "worker_cpu": 1, "worker_memory": "2 GiB", "security": False}
    return resolve_cluster_spec({**values, **extra, "backend_options": OPTIONS})


def _aws(region=REGION):
    return AWS(AWSOptions(region=region))


@pytest.fixture
def backend():
    backend = load_backend("aws")
    return backend, backend.validate_options(OPTIONS)


@pytest.fixture
def other_account(offline_ec2):
    """A second account and its S3 client; every bucket it made is deleted afterwards."""
    credentials = offline_ec2.add_account()
    s3 = offline_ec2.client("s3", REGION, credentials=credentials)
    yield credentials, s3
    for bucket in s3.list_buckets()["Buckets"]:
        for item in s3.list_objects_v2(Bucket=bucket["Name"]).get("Contents", []):
            s3.delete_object(Bucket=bucket["Name"], Key=item["Key"])
        s3.delete_bucket(Bucket=bucket["Name"])


def _objects(s3, bucket):
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def _marker_bundle(marker):
    """A zip that, run as the agent (``python -m coiled_core.node``), creates ``marker``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("coiled_core/__init__.py", "")
        archive.writestr("coiled_core/node/__init__.py", "")
        archive.writestr("coiled_core/node/__main__.py", f"open({str(marker)!r}, 'w').close()\n")
    return buffer.getvalue()


def _boot_and_power_off(offline_ec2, user_data):
    """Boot one simulated instance with ``user_data``; return its node.log once it powered off."""
    ec2 = offline_ec2.client("ec2", REGION)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    (instance,) = ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1, UserData=user_data)["Instances"]
    iid = instance["InstanceId"]
    wait_until(
        lambda: offline_ec2.instances.get(iid) is not None and offline_ec2.instances[iid].status != "running",
        timeout=240,
        message="the node to power off",
    )
    return (offline_ec2.instances[iid].directory / "node.log").read_text()


# -- the bucket -----------------------------------------------------------------------------------
def test_a_bucket_another_account_owns_is_refused(offline_ec2, backend, other_account):
    backend, _ = backend
    _, foreign_s3 = other_account
    # A region where this account has no artifact bucket yet: the other account takes the name.
    region = "us-west-2"
    options = backend.validate_options({**OPTIONS, "region": region})
    name = artifacts.bucket_name(_aws(region))
    foreign_s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    spec = resolve_cluster_spec(
        {"name": "foreign-bucket", "n_workers": 1, "security": False, "backend_options": options.model_dump()}
    )
    with pytest.raises(ProvisionError, match="not owned by AWS account"):
        backend.provision(spec, options)
    assert _objects(foreign_s3, name) == []  # nothing uploaded to it
    ec2 = offline_ec2.client("ec2", region)
    live = [
        i for r in ec2.describe_instances(Filters=[{"Name": "tag:coiled:cluster", "Values": ["foreign-bucket"]}])["Reservations"]
        for i in r["Instances"] if i["State"]["Name"] != "terminated"
    ]
    assert live == []
    # Every other call on the bucket says whose it must be, so none can use it either.
    with pytest.raises(ForeignBucketError):
        artifacts.upload_once(_aws(region), name, "agent/x.zip", __file__)
    with pytest.raises(ForeignBucketError):
        artifacts.read_logs(_aws(region), name, "foreign-bucket", None)


def test_a_bucket_taken_between_look_and_create_is_refused(offline_ec2, other_account, monkeypatch):
    """The name is free when the client looks, and another account creates it just before the
    client does (S3 answers BucketAlreadyExists, which is not ours)."""
    _, foreign_s3 = other_account
    aws = _aws("eu-west-1")
    name = artifacts.bucket_name(aws)
    original = botocore.client.BaseClient._make_api_call

    def racing(self, operation_name, api_params):
        if operation_name == "CreateBucket" and api_params.get("Bucket") == name and self is not foreign_s3:
            foreign_s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        return original(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", racing)
    with pytest.raises(ForeignBucketError, match=name):
        artifacts.ensure_bucket(aws)


def test_an_existing_bundle_is_checked_not_trusted(offline_ec2, tmp_path):
    aws = _aws()
    bucket = artifacts.ensure_bucket(aws)
    bundle = tmp_path / "coiled_core-trust.zip"
    bundle.write_bytes(b"the real agent")
    s3 = offline_ec2.client("s3", REGION)
    key = f"agent/{bundle.name}"
    s3.put_object(Bucket=bucket, Key=key, Body=b"something else, put there earlier")
    stored = artifacts.upload_once(aws, bucket, key, bundle)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"the real agent"
    assert stored == StoredObject(bucket, key, hashlib.sha256(b"the real agent").hexdigest(), aws.account_id, REGION)


# -- the nodes ------------------------------------------------------------------------------------
def test_a_node_fetches_with_its_role_and_every_s3_call_names_the_owner(offline_ec2, backend):
    backend, options = backend
    offline_ec2.s3_requests_without_expected_owner.clear()
    record = backend.provision(_spec("trust-chain"), options)
    try:
        ec2 = offline_ec2.client("ec2", REGION)
        ids = [record.backend_ids["scheduler_instance_id"], *(w.backend_ids["instance_id"] for w in record.workers)]
        for iid in ids:
            data = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
            script = base64.b64decode(data).decode()
            # No presigned URL: nothing of the client's credentials is in the user data.
            assert offline_ec2.credentials.access_key_id not in script and "X-Amz-" not in script
            # The agent rotates the node's log, so a long-lived node's disk never fills.
            node_json = json.loads(script.split("<<'COILED_NODE_JSON'\n", 1)[1].split("\nCOILED_NODE_JSON", 1)[0])
            assert node_json["log_file"] == "node.log" and node_json["log_max_bytes"] > 0
        # The nodes fetched and verified the bundle, ran the agent and uploaded their logs.
        wait_until(lambda: len([t for t in backend.logs(record, options, None).values() if "coiled" in t]) == len(ids),
                   timeout=240, message="every node's log in the bucket")
        # Every local user reads every process's arguments: no secret is in those of the nodes'.
        import psutil

        secret = offline_ec2.credentials.secret_access_key
        for process in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            assert secret not in cmdline and "PRIVATE KEY" not in cmdline, cmdline[:200]
    finally:
        backend.teardown(record, options)
    assert offline_ec2.errors == []
    assert offline_ec2.s3_requests_without_expected_owner == []


def test_a_node_refuses_a_bundle_whose_sha256_differs(offline_ec2, tmp_path):
    aws = _aws()
    boot = _Boot(aws, _spec("tampered-bundle"), AWSOptions.model_validate(OPTIONS))
    s3 = offline_ec2.client("s3", REGION)
    marker = tmp_path / "tampered-bundle-ran"
    # The client uploaded a bundle and wrote its sha256 in the user data; the object was then
    # replaced. (A bundle of a new sha256: machines keep bundles they checked by sha256, and one
    # in the cache is used, after the same check, without fetching.)
    key = "agent/coiled_core-tampered.zip"
    s3.put_object(Bucket=boot.bundle.bucket, Key=key, Body=_marker_bundle(marker))
    expected = hashlib.sha256(b"the bundle the client uploaded").hexdigest()
    boot.bundle = StoredObject(boot.bundle.bucket, key, expected, boot.bundle.owner, REGION)
    log = _boot_and_power_off(offline_ec2, boot.script(boot.scheduler()))
    assert "refusing to run the agent bundle" in log and expected in log
    assert not marker.exists()


def test_a_node_refuses_a_bucket_another_account_owns(offline_ec2, other_account, tmp_path):
    """Even a bundle with the expected sha256 is not fetched from a bucket that is not the
    expected owner's."""
    _, foreign_s3 = other_account
    aws = _aws()
    boot = _Boot(aws, _spec("foreign-node-fetch"), AWSOptions.model_validate(OPTIONS))
    marker = tmp_path / "foreign-bundle-ran"
    payload = _marker_bundle(marker)
    foreign_s3.create_bucket(Bucket="someone-elses-artifacts")
    foreign_s3.put_object(Bucket="someone-elses-artifacts", Key="agent/x.zip", Body=payload)
    boot.bundle = StoredObject("someone-elses-artifacts", "agent/x.zip", hashlib.sha256(payload).hexdigest(), aws.account_id, REGION)
    log = _boot_and_power_off(offline_ec2, boot.script(boot.scheduler()))
    assert "AccessDenied" in log
    assert not marker.exists()


# -- the log uploader -----------------------------------------------------------------------------
@pytest.fixture
def uploader_settings(offline_ec2, tmp_path, monkeypatch):
    monkeypatch.setenv("COILED_INSTANCE_ID", "i-uploader")
    aws = _aws()
    return {
        "log_bucket": artifacts.ensure_bucket(aws),
        "log_key": "logs/uploader-test/{instance_id}.log",
        "region": REGION,
        "expected_bucket_owner": aws.account_id,
    }


def _uploaded(offline_ec2, settings):
    try:
        reply = offline_ec2.client("s3", REGION).get_object(Bucket=settings["log_bucket"], Key="logs/uploader-test/i-uploader.log")
    except ClientError as e:
        assert e.response["Error"]["Code"] == "NoSuchKey"
        return None
    return reply["Body"].read()


def test_the_log_uploader_sends_the_tail_only_when_the_file_changed(offline_ec2, uploader_settings, tmp_path):
    settings = uploader_settings
    path = str(tmp_path / "node.log")
    log = open(path, "wb")
    s3 = offline_ec2.client("s3", REGION)
    try:
        log.write(b"a" * 1_500_000 + b"b" * 1_500_000)
        log.flush()
        uploader = LogUploader(settings)
        uploader.upload(path)
        assert _uploaded(offline_ec2, settings) == b"a" * 500_000 + b"b" * 1_500_000
        # Unchanged: not sent again (the deleted object stays deleted).
        s3.delete_object(Bucket=settings["log_bucket"], Key="logs/uploader-test/i-uploader.log")
        uploader.upload(path)
        assert _uploaded(offline_ec2, settings) is None
        log.write(b"c" * 10)
        log.flush()
        uploader.upload(path)
        assert _uploaded(offline_ec2, settings) == b"a" * 499_990 + b"b" * 1_500_000 + b"c" * 10
        # Rotated by copy-and-truncate: the file shrank, and that is what is sent.
        log.seek(0)
        log.truncate()
        log.write(b"rotated\n")
        log.flush()
        uploader.upload(path)
        assert _uploaded(offline_ec2, settings) == b"rotated\n"
    finally:
        log.close()
        s3.delete_object(Bucket=settings["log_bucket"], Key="logs/uploader-test/i-uploader.log")


def test_the_log_uploader_refuses_a_bucket_another_account_owns(offline_ec2, uploader_settings, other_account, tmp_path):
    _, foreign_s3 = other_account
    foreign_s3.create_bucket(Bucket="someone-elses-logs")
    path = tmp_path / "node.log"
    path.write_text("a secret in a log line\n")
    LogUploader({**uploader_settings, "log_bucket": "someone-elses-logs"}).upload(str(path))
    assert _objects(foreign_s3, "someone-elses-logs") == []


def test_node_logs_in_the_bucket_expire_and_other_lifecycle_rules_stay(offline_ec2):
    """Logs hold whatever the user's code printed: the bucket deletes them after a while."""
    aws = _aws("us-west-2")  # a bucket of its own: the rule is added when it is made
    s3 = aws.client("s3")
    bucket = artifacts.ensure_bucket(aws)
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket, ExpectedBucketOwner=aws.account_id)["Rules"]
    [rule] = [r for r in rules if r["ID"] == artifacts.LOG_RULE_ID]
    assert rule["Status"] == "Enabled" and rule["Filter"]["Prefix"] == "logs/"
    assert rule["Expiration"]["Days"] == artifacts.LOG_RETENTION_DAYS
    # An existing bucket gets it too, beside an administrator's own rule.
    own = {"ID": "team-rule", "Filter": {"Prefix": "team/"}, "Status": "Enabled", "Expiration": {"Days": 7}}
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, ExpectedBucketOwner=aws.account_id, LifecycleConfiguration={"Rules": [own]})
    artifacts.ensure_bucket(aws)
    ids = [r["ID"] for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket, ExpectedBucketOwner=aws.account_id)["Rules"]]
    assert sorted(ids) == sorted(["team-rule", artifacts.LOG_RULE_ID])
