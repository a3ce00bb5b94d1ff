"""``backend_options`` of the AWS backend: defaults, aliases and the errors users see."""

import pytest
from pydantic import ValidationError

from coiled_aws.options import DEFAULT_REGION, AWSOptions
from coiled_core.errors import ClusterSpecError
from coiled_core.spec import validate_backend_options


def validate(options: dict) -> AWSOptions:
    return validate_backend_options(AWSOptions, options, "aws")


def test_defaults_make_empty_options_valid():
    opts = validate({})
    assert opts.region is None
    assert opts.zone is None and opts.vpc_id is None and opts.subnet_id is None
    assert opts.security_group_ids == []
    assert opts.ami is None and opts.instance_types is None
    assert opts.spot_policy == "on-demand"
    assert opts.key_name is None and opts.iam_instance_profile is None
    assert opts.tags == {}
    assert opts.allow_ingress_from is None
    assert opts.use_public_ip is True
    assert opts.root_volume_gib == 50
    assert opts.endpoint_url is None


def test_every_option_is_documented():
    for name, field in AWSOptions.model_fields.items():
        assert field.description, name


def test_region_and_its_alias_region_name():
    assert validate({"region": "us-east-2"}).region == "us-east-2"
    assert validate({"region_name": "eu-west-1"}).region == "eu-west-1"
    assert AWSOptions(region_name="ap-south-1").region == "ap-south-1"
    assert AWSOptions(region="ap-south-1").region == "ap-south-1"


def test_bad_region_names_the_option_the_user_typed():
    with pytest.raises(ClusterSpecError, match=r"backend_options\.region_name: 'useast' is not an AWS region"):
        validate({"region_name": "useast"})
    with pytest.raises(ClusterSpecError, match=r"backend_options\.region: 'useast'"):
        validate({"region": "useast"})


def test_resolve_region_falls_back_to_boto3_then_default():
    class Session:
        region_name = None

    assert AWSOptions().resolve_region(Session()) == DEFAULT_REGION
    Session.region_name = "us-west-2"
    assert AWSOptions().resolve_region(Session()) == "us-west-2"
    assert AWSOptions(region="eu-north-1").resolve_region(Session()) == "eu-north-1"


def test_zone_gives_region_and_must_match_it():
    assert validate({"zone": "us-east-2b"}).region == "us-east-2"
    with pytest.raises(ClusterSpecError, match="'use1-az4' is not an availability zone name"):
        validate({"zone": "use1-az4"})
    with pytest.raises(ClusterSpecError, match="zone 'us-west-2a' is not in region 'us-east-1'"):
        validate({"region": "us-east-1", "zone": "us-west-2a"})
    with pytest.raises(ClusterSpecError, match="not an availability zone"):
        validate({"zone": "east"})


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ClusterSpecError, match="did you mean 'region'"):
        validate({"regoin": "x"})
    with pytest.raises(ClusterSpecError, match="did you mean 'spot_policy'"):
        validate({"spot_polcy": "spot"})


def test_cidr_is_validated_and_normalised():
    assert validate({"allow_ingress_from": "203.0.113.7"}).allow_ingress_from == "203.0.113.7/32"
    assert validate({"allow_ingress_from": "10.1.2.3/16"}).allow_ingress_from == "10.1.0.0/16"
    assert validate({"allow_ingress_from": "0.0.0.0/0"}).allow_ingress_from == "0.0.0.0/0"
    with pytest.raises(ClusterSpecError, match=r"allow_ingress_from: '300\.1\.2\.3/32' is not a network in CIDR"):
        validate({"allow_ingress_from": "300.1.2.3/32"})
    with pytest.raises(ClusterSpecError, match="CIDR"):
        validate({"allow_ingress_from": "my laptop"})


def test_spot_policy():
    assert validate({"spot_policy": "spot"}).spot_policy == "spot"
    assert validate({"spot_policy": "spot_with_fallback"}).spot_policy == "spot_with_fallback"
    assert validate({"spot_policy": "spot-with-fallback"}).spot_policy == "spot_with_fallback"
    assert validate({"spot_policy": "on_demand"}).spot_policy == "on-demand"
    with pytest.raises(ClusterSpecError, match="spot_policy: 'cheap' is not a spot policy; use 'on-demand'"):
        validate({"spot_policy": "cheap"})


def test_root_volume_lower_bound():
    assert validate({"root_volume_gib": 8}).root_volume_gib == 8
    with pytest.raises(ClusterSpecError, match="root_volume_gib: must be at least 8"):
        validate({"root_volume_gib": 4})
    with pytest.raises(ClusterSpecError, match="root_volume_gib"):
        validate({"root_volume_gib": "big"})


def test_resource_ids_and_image():
    opts = validate(
        {
            "vpc_id": "vpc-0abc123",
            "subnet_id": "subnet-12ab",
            "security_group_ids": ["sg-1", "sg-1", "sg-2f"],
            "ami": "ami-0123456789abcdef0",
        }
    )
    assert opts.security_group_ids == ["sg-1", "sg-2f"]
    assert validate({"ami": "resolve:ssm:/aws/service/x"}).ami == "resolve:ssm:/aws/service/x"
    for key, value in [("vpc_id", "subnet-1"), ("subnet_id", "sub"), ("ami", "ubuntu")]:
        with pytest.raises(ClusterSpecError, match=key):
            validate({key: value})
    with pytest.raises(ClusterSpecError, match="security_group_ids"):
        validate({"security_group_ids": ["default"]})


def test_instance_types_override():
    assert validate({"instance_types": ["M6i.xlarge", "m7i.xlarge", "m6i.xlarge"]}).instance_types == [
        "m6i.xlarge",
        "m7i.xlarge",
    ]
    with pytest.raises(ClusterSpecError, match="at least one instance type"):
        validate({"instance_types": []})
    with pytest.raises(ClusterSpecError, match="'xlarge' is not an EC2 instance type"):
        validate({"instance_types": ["xlarge"]})


def test_tags_endpoint_and_names():
    assert validate({"tags": {"team": "data"}}).tags == {"team": "data"}
    with pytest.raises(ClusterSpecError, match="reserved prefix 'aws:'"):
        validate({"tags": {"aws:owner": "me"}})
    with pytest.raises(ClusterSpecError, match="tags"):
        validate({"tags": {"n": 1}})
    assert validate({"endpoint_url": "http://127.0.0.1:5000/"}).endpoint_url == "http://127.0.0.1:5000"
    with pytest.raises(ClusterSpecError, match="endpoint_url: '127.0.0.1:5000' is not an endpoint URL"):
        validate({"endpoint_url": "127.0.0.1:5000"})
    with pytest.raises(ClusterSpecError, match="key_name: must not be empty"):
        validate({"key_name": " "})
    assert validate({"use_public_ip": False}).use_public_ip is False


def test_model_itself_forbids_extra_keys():
    with pytest.raises(ValidationError):
        AWSOptions.model_validate({"regoin": "us-east-1"})


KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"


def test_kms_key_id_forms_and_errors():
    assert validate({}).kms_key_id is None
    for form in (
        KEY_ID,
        "mrk-1234abcd12ab34cd56ef1234567890ab",
        "alias/coiled-secrets",
        f"arn:aws:kms:us-east-2:123456789012:key/{KEY_ID}",
        "arn:aws:kms:us-east-2:123456789012:alias/coiled-secrets",
    ):
        assert validate({"region": "us-east-2", "kms_key_id": form}).kms_key_id == form
    with pytest.raises(ClusterSpecError, match="kms_key_id: 'my key' is not a KMS key; give a key id"):
        validate({"kms_key_id": "my key"})
    with pytest.raises(ClusterSpecError, match="AWS managed key.*leave kms_key_id out"):
        validate({"kms_key_id": "alias/aws/ssm"})
    with pytest.raises(ClusterSpecError, match="is a key in us-west-2, but the cluster is in 'us-east-2'"):
        validate({"region": "us-east-2", "kms_key_id": f"arn:aws:kms:us-west-2:123456789012:key/{KEY_ID}"})


def test_iam_instance_profile_name_or_arn():
    assert validate({"iam_instance_profile": "dask-nodes"}).iam_instance_profile == "dask-nodes"
    arn = "arn:aws:iam::123456789012:instance-profile/team/dask-nodes"
    assert validate({"iam_instance_profile": arn}).iam_instance_profile == "dask-nodes"
    with pytest.raises(ClusterSpecError, match="iam_instance_profile: 'dask nodes' is not an instance profile name or ARN"):
        validate({"iam_instance_profile": "dask nodes"})


def test_permissions_boundary_name_or_arn():
    assert validate({}).permissions_boundary is None
    arn = "arn:aws:iam::123456789012:policy/team/coiled-boundary"
    assert validate({"permissions_boundary": arn}).permissions_boundary == arn
    assert validate({"permissions_boundary": "coiled-boundary"}).permissions_boundary == "coiled-boundary"
    with pytest.raises(ClusterSpecError, match="permissions_boundary: 'my boundary' is not a managed policy name or ARN"):
        validate({"permissions_boundary": "my boundary"})


def test_regions_are_those_boto3_knows_with_close_suggestions():
    assert validate({"region": "eu-central-2"}).region == "eu-central-2"
    with pytest.raises(ClusterSpecError, match=r"region: 'us-central1' is not an AWS region \(that is a Google Cloud"):
        validate({"region": "us-central1"})
    with pytest.raises(ClusterSpecError, match=r"'us-east-9' is not an AWS region; did you mean 'us-east-"):
        validate({"region": "us-east-9"})
    with pytest.raises(ClusterSpecError, match="zone 'us-east-9a' is in no AWS region"):
        validate({"zone": "us-east-9a"})


def test_coiled_forms_of_ingress_and_per_role_volumes():
    assert validate({"allow_ingress_from": "me"}).allow_ingress_from == "me"
    assert validate({"allow_ingress_from": "Everyone"}).allow_ingress_from == "0.0.0.0/0"
    assert validate({"allow_ingress_from": "2001:db8::1"}).allow_ingress_from == "2001:db8::1/128"
    opts = validate({"root_volume_gib": 40, "worker_root_volume_gib": 200})
    assert (opts.volume_gib("worker"), opts.volume_gib("scheduler")) == (200, 40)
    with pytest.raises(ClusterSpecError, match="scheduler_root_volume_gib: must be at least 8"):
        validate({"scheduler_root_volume_gib": 2})


def test_tags_the_backend_keeps_and_characters_aws_refuses():
    with pytest.raises(ClusterSpecError, match="prefix 'coiled:'"):
        validate({"tags": {"coiled:cluster": "other"}})
    with pytest.raises(ClusterSpecError, match=r"tags: the value of tag 'team' contains '!'"):
        validate({"tags": {"team": "data!"}})
    with pytest.raises(ClusterSpecError, match="at most 43"):
        validate({"tags": {f"k{i}": "v" for i in range(44)}})
    assert validate({"tags": {"Cost Centre": "ÉTÉ 2024/q3 @team"}}).tags == {"Cost Centre": "ÉTÉ 2024/q3 @team"}


def test_instance_type_lists_and_google_machine_types():
    assert validate({"scheduler_instance_types": "M7i.large"}).scheduler_instance_types == ["m7i.large"]
    with pytest.raises(ClusterSpecError, match="'n2-standard-8' is not an EC2 instance type name \\(that is a Google Cloud"):
        validate({"instance_types": ["n2-standard-8"]})
