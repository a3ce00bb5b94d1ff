"""What EC2 takes as AWS documents it, checked on the offline EC2 with the images moto ships (their
``RootDeviceName`` is the real one): the root volume is the image's root device, a fleet names a
launch template version, and the default image is Amazon Linux of the nodes' architecture.

The requests are recorded through botocore's ``before-parameter-build`` event on the sessions
the backend makes (``coiled_aws.session.SESSION_HOOKS``).
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from coiled_core.plugins import load_backend
from coiled_core.spec import resolve_cluster_spec

from coiled_aws import session
from coiled_aws.options import AWSOptions
from coiled_aws.plugin import _resolve_ami
from coiled_aws.session import AWS

pytestmark = pytest.mark.usefixtures("offline_ec2")

REGION = "us-east-1"
OPTIONS = {"region": REGION, "allow_ingress_from": "127.0.0.1/32"}
#: An Ubuntu image moto ships: its root device is /dev/sda1 (as on every Ubuntu image).
UBUNTU_AMI = "ami-785db401"


@pytest.fixture
def requests():
    """Every EC2/SSM request the backend makes during the test: (operation, params)."""
    seen: list[tuple[str, dict]] = []

    def record(params, model, **_):
        seen.append((model.name, params))

    def hook(boto_session):
        boto_session.events.register("before-parameter-build.ec2", record)

    session.SESSION_HOOKS.append(hook)
    yield seen
    session.SESSION_HOOKS.remove(hook)


def _spec(name, **options):
    values = {"name": name, "n_workers": 1, "worker_cpu": 1, "worker_memory": "2 GiB", "security": False}
    return resolve_cluster_spec({**values, "backend_options": {**OPTIONS, **options}})


def _provision_and_teardown(spec):
    backend = load_backend("aws")
    options = backend.validate_options(spec.backend_options)
    record = backend.provision(spec, options)
    backend.teardown(record, options)


def test_the_root_volume_is_the_images_root_device(requests):
    """/dev/xvda on an Ubuntu image (root /dev/sda1) would add a second, empty disk."""
    _provision_and_teardown(_spec("root-device", ami=UBUNTU_AMI))
    launches = [params for name, params in requests if name == "RunInstances"]
    assert launches
    for params in launches:
        assert [m["DeviceName"] for m in params["BlockDeviceMappings"]] == ["/dev/sda1"], params["BlockDeviceMappings"]


def test_the_default_image_keeps_its_own_root_device(requests):
    _provision_and_teardown(_spec("root-device-default"))
    images = [params for name, params in requests if name == "RunInstances"]
    ec2 = AWS(AWSOptions(**OPTIONS)).ec2
    for params in images:
        image = ec2.describe_images(ImageIds=[params["ImageId"]])["Images"][0]
        assert [m["DeviceName"] for m in params["BlockDeviceMappings"]] == [image["RootDeviceName"]]


def test_a_fleet_names_a_launch_template_version_number(requests):
    _provision_and_teardown(_spec("fleet-version", spot_policy="spot_with_fallback"))
    created = [params for name, params in requests if name == "CreateLaunchTemplate"]
    fleets = [params for name, params in requests if name == "CreateFleet"]
    assert created and fleets
    for params in fleets:
        version = params["LaunchTemplateConfigs"][0]["LaunchTemplateSpecification"]["Version"]
        assert version.isdigit(), version


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_the_default_image_without_ssm_is_amazon_linux_of_the_architecture(arch, monkeypatch):
    """When SSM's public parameter cannot be read, the image found by name is Amazon Linux 2023
    for ``arch``: never Windows, never an EKS node image, never another architecture."""

    def not_found(**_):
        raise ClientError({"Error": {"Code": "ParameterNotFound", "Message": "not here"}}, "GetParameter")

    def hook(boto_session):
        boto_session.events.register("before-parameter-build.ssm.GetParameter", not_found)

    monkeypatch.setattr(session, "SESSION_HOOKS", [*session.SESSION_HOOKS, hook])
    aws = AWS(AWSOptions(**OPTIONS))
    image_id = _resolve_ami(aws, AWSOptions(**OPTIONS), arch)
    image = aws.ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert image["Architecture"] == arch
    assert image.get("Platform") != "windows" and "windows" not in image.get("PlatformDetails", "").lower()
    assert image["Name"].startswith("al2023-ami-2023."), image["Name"]
    assert "eks" not in image["Name"].lower() and "minimal" not in image["Name"]
