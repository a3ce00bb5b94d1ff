"""Every request to the offline EC2 is held to botocore's service model with the constraints
botocore's own validator skips (lengths, patterns, enums, ranges), and refused as AWS refuses it:
the service's error code and AWS's message. (The rest of the AWS suite runs with this on: the
offline environment loads it into every client, see ``OfflineEC2.environ``.)"""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import ClientError

from coiled_aws.options import AWSOptions
from coiled_aws.session import AWS
from coiled_aws.testing import validation

pytestmark = pytest.mark.usefixtures("offline_ec2")

REGION = "us-east-1"


@pytest.fixture
def aws():
    return AWS(AWSOptions(region=REGION))


def _refused(call, code: str, *words: str) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    assert error["Code"] == code, error
    assert error["Message"].startswith("1 validation error detected: Value "), error
    for word in words:
        assert word in error["Message"], error
    return caught.value


def test_the_offline_environment_loads_the_validation_into_every_client():
    assert validation.PLUGIN in os.environ["BOTOCORE_EXPERIMENTAL__PLUGINS"].split(",")


def test_a_name_over_the_length_limit_is_refused(aws):
    """A node role's name is at most 64 characters (coiled_aws.iam keeps them at 42)."""
    _refused(
        lambda: aws.client("iam").create_role(RoleName="coiled-node-" + "a" * 60, AssumeRolePolicyDocument="{}"),
        "ValidationError", "at 'roleName'", "length less than or equal to 64",
    )


def test_a_name_outside_the_pattern_is_refused(aws):
    _refused(
        lambda: aws.client("iam").create_instance_profile(InstanceProfileName="coiled node/x"),
        "ValidationError", "at 'instanceProfileName'", "regular expression pattern",
    )


def test_a_value_outside_the_enum_is_refused(aws):
    _refused(
        lambda: aws.ec2.run_instances(ImageId="ami-785db401", InstanceType="m5.huge", MinCount=1, MaxCount=1),
        "InvalidParameterValue", "at 'instanceType'", "enum value set",
    )


def test_a_number_outside_the_range_is_refused(aws):
    """botocore checks a number's minimum, not its maximum (moto takes the first of these)."""
    _refused(lambda: aws.ec2.describe_launch_templates(MaxResults=500), "InvalidParameterValue", "at 'maxResults'", "less than or equal to 200")
    _refused(
        lambda: aws.client("ssm").get_parameters_by_path(Path="/coiled/x/secrets", MaxResults=50),
        "ValidationException", "at 'maxResults'", "less than or equal to 10",
    )


def test_an_empty_key_is_refused_by_s3(aws):
    _refused(lambda: aws.client("s3").put_object(Bucket="coiled-artifacts-x", Key="", Body=b""), "InvalidArgument", "at 'key'")


def test_a_valid_request_passes(aws):
    assert aws.client("sts").get_caller_identity()["Account"] == aws.account_id
    assert validation.violations({"RoleName": "coiled-node-abc-worker"}, aws.client("iam").meta.service_model.operation_model("GetRole").input_shape) == []


def test_a_process_without_the_plugin_is_refused_by_the_stand_in(offline_ec2, tmp_path):
    """The nodes' processes cannot import the plugin: the stand-in itself refuses what they send
    that AWS would refuse (SSM, EC2, IAM, STS, S3), with AWS's error."""
    import subprocess
    import sys

    script = tmp_path / "node_call.py"
    script.write_text(
        "import boto3, botocore.exceptions, json\n"
        "out = {}\n"
        "calls = {\n"
        "  'ssm': lambda: boto3.client('ssm').get_parameters_by_path(Path='/coiled/x/secrets', MaxResults=50),\n"
        "  'ec2': lambda: boto3.client('ec2').describe_launch_templates(MaxResults=500),\n"
        "  'iam': lambda: boto3.client('iam').create_instance_profile(InstanceProfileName='coiled node/x'),\n"
        "  'sts': lambda: boto3.client('sts').get_caller_identity(),\n"
        "  's3-acl': lambda: boto3.client('s3').put_object(Bucket='any-bucket', Key='k', Body=b'x', ACL='everyone-writes'),\n"
        "  's3-list': lambda: boto3.client('s3').list_objects_v2(Bucket='any-bucket', EncodingType='base64'),\n"
        "}\n"
        "for name, call in calls.items():\n"
        "    try:\n"
        "        call(); out[name] = 'ok'\n"
        "    except botocore.exceptions.ClientError as e:\n"
        "        out[name] = [e.response['Error']['Code'], e.response['Error']['Message']]\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "BOTOCORE_EXPERIMENTAL__PLUGINS": "DISABLED"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import json

    out = json.loads(done.stdout)
    assert out["ssm"][0] == "ValidationException" and "at 'maxResults'" in out["ssm"][1]
    assert out["ec2"][0] == "InvalidParameterValue" and "less than or equal to 200" in out["ec2"][1]
    assert out["iam"][0] == "ValidationError" and "regular expression pattern" in out["iam"][1]
    assert out["sts"] == "ok"
    # S3 speaks REST: its members travel in the path, the query string and the headers.
    assert out["s3-acl"][0] == "InvalidArgument" and "everyone-writes" in out["s3-acl"][1]
    assert out["s3-list"][0] == "InvalidArgument" and "base64" in out["s3-list"][1]
