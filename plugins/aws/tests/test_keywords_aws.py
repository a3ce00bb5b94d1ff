"""Today's Coiled keywords on the offline EC2: what each makes of the cluster.

One modern ``coiled.Cluster`` call end to end (region, instance types, spot with fallback, tags,
disk sizes, ingress and SSH, a Coiled-style name), and the choices the keywords steer before
anything exists (architecture and image, cpu/memory ranges, the scheduler's GPU), and
``use_best_zone`` moving the scheduler to a zone with capacity.
"""

from __future__ import annotations

import botocore.client
import pytest
from botocore.exceptions import ClientError

import coiled
from coiled_core import ingress
from coiled_core.backend import dns_label, worker_name_prefix
from coiled_core.plugins import load_backend
from coiled_core.spec import resolve_cluster_spec

from coiled_aws import iam, network
from coiled_aws.instance_types import GiB, describe_instance_types
from coiled_aws.plugin import _plan
from coiled_aws.session import AWS

pytestmark = pytest.mark.usefixtures("offline_ec2")

REGION = "us-east-1"
CLIENT_ADDRESS = "198.51.100.7"


def _live_instances(ec2, name):
    tag = [{"Name": "tag:coiled:cluster", "Values": [name]}]
    return [
        i
        for r in ec2.describe_instances(Filters=tag)["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] not in ("terminated", "shutting-down")
    ]


def _left(simulator, name):
    """Everything of cluster ``name`` still in the simulated account."""
    ec2 = simulator.client("ec2", REGION)
    tag = [{"Name": "tag:coiled:cluster", "Values": [name]}]
    aws = AWS(load_backend("aws").validate_options({"region": REGION}))
    roles = []
    for role in ("scheduler", "worker"):
        try:
            simulator.client("iam").get_role(RoleName=iam.node_role_name(aws, name, role))
            roles.append(role)
        except ClientError:
            pass
    return {
        "instances": [i["InstanceId"] for i in _live_instances(ec2, name)],
        "security groups": [g["GroupName"] for g in ec2.describe_security_groups(Filters=tag)["SecurityGroups"]],
        "launch templates": [t["LaunchTemplateName"] for t in ec2.describe_launch_templates(Filters=tag)["LaunchTemplates"]],
        "parameters": [
            p["Name"]
            for p in simulator.client("ssm", REGION).get_parameters_by_path(Path=f"/coiled/{name}", Recursive=True)["Parameters"]
        ],
        "roles": roles,
    }


def _tags(resource):
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def test_a_modern_coiled_call_with_a_coiled_style_name_runs_and_leaves_nothing(offline_ec2, monkeypatch):
    monkeypatch.setattr(ingress, "public_address", lambda: CLIENT_ADDRESS)
    name = "My_Cluster-2"
    ec2 = offline_ec2.client("ec2", REGION)
    cluster = coiled.Cluster(
        name=name,
        n_workers=2,
        region=REGION,
        worker_vm_types=["m7i.large", "m6i.large"],
        scheduler_vm_types="t3.medium",
        spot_policy="spot_with_fallback",
        tags={"team": "data", "project": "forecast"},
        worker_disk_size=120,
        scheduler_disk_size="60 GiB",
        allow_ingress_from="me",
        allow_ssh=True,
        backend="aws",
        wait_for_workers=0,
        show_widget=False,
    )
    try:
        assert cluster.name == name
        instances = _live_instances(ec2, name)
        by_role = {}
        for instance in instances:
            by_role.setdefault(_tags(instance)["coiled:role"], []).append(instance)
        [scheduler], workers = by_role["scheduler"], by_role["worker"]
        assert len(workers) == 2
        # Instance types, and the purchase option: workers from an instant fleet's spot market.
        assert scheduler["InstanceType"] == "t3.medium" and "InstanceLifecycle" not in scheduler
        assert {w["InstanceType"] for w in workers} <= {"m7i.large", "m6i.large"}
        assert [w.get("InstanceLifecycle") for w in workers] == ["spot", "spot"]
        fleets = [f for f in ec2.describe_fleets()["Fleets"] if _tags(f).get("coiled:cluster") == name]
        assert [f["TargetCapacitySpecification"]["DefaultTargetCapacityType"] for f in fleets] == ["spot"]
        # Tags: the user's on every instance, and the exact name in coiled:cluster.
        for instance in instances:
            assert {"team": "data", "project": "forecast", "coiled:cluster": name}.items() <= _tags(instance).items()
        # Root volumes: the scheduler's as launched; the workers' as their launch template says
        # (moto gives fleet instances a default volume whatever the template holds).
        volumes = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [scheduler["InstanceId"]]}])
        assert [v["Size"] for v in volumes["Volumes"]] == [60]
        [template] = ec2.describe_launch_templates(Filters=[{"Name": "tag:coiled:cluster", "Values": [name]}])["LaunchTemplates"]
        assert template["LaunchTemplateName"].startswith(dns_label(name, prefix="coiled-") + "-")
        data = ec2.describe_launch_template_versions(LaunchTemplateId=template["LaunchTemplateId"])["LaunchTemplateVersions"][0]
        assert [m["Ebs"]["VolumeSize"] for m in data["LaunchTemplateData"]["BlockDeviceMappings"]] == [120]
        # Ingress: 'me' is this client's address, for Dask and for SSH.
        [group] = ec2.describe_security_groups(Filters=[{"Name": "tag:coiled:cluster", "Values": [name]}])["SecurityGroups"]
        assert group["GroupName"] == dns_label(name, max_length=255, prefix="coiled-") != f"coiled-{name}"
        assert group["GroupName"].islower() and "_" not in group["GroupName"]
        opened = {(p.get("FromPort"), p.get("ToPort")): [r["CidrIp"] for r in p.get("IpRanges", [])] for p in group["IpPermissions"]}
        assert opened[(8786, 8787)] == opened[(22, 22)] == [f"{CLIENT_ADDRESS}/32"]
        # Described and listed under the exact name.
        listed = {record.name: record for record in coiled.list_clusters(backend="aws")}
        assert name in listed and listed[name].state.is_live
        record = listed[name]
        assert all(w.name.startswith(worker_name_prefix(name)) for w in record.workers)
        assert record.spec["name"] == name and record.spec["backend_options"]["instance_types"] == ["m7i.large", "m6i.large"]
        assert f"/coiled/{name}/spec" in _left(offline_ec2, name)["parameters"]
    finally:
        cluster.close()
    assert _left(offline_ec2, name) == {
        "instances": [],
        "security groups": [],
        "launch templates": [],
        "parameters": [],
        "roles": [],
    }
    assert name not in {r.name for r in coiled.list_clusters(backend="aws") if r.state.is_live}


def _spec_and_options(**keywords):
    """What ``coiled.Cluster(**keywords, backend="aws")`` checks, as spec and options."""
    keywords.setdefault("allow_ingress_from", "127.0.0.1/32")
    spec, options = coiled.check_cluster(backend="aws", **keywords)
    return spec, options


def test_arm_chooses_arm64_types_and_an_arm64_image(offline_ec2):
    ssm = offline_ec2.client("ssm", REGION)
    image = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{}"
    arm_ami = ssm.get_parameter(Name=image.format("arm64"))["Parameter"]["Value"]
    x86_ami = ssm.get_parameter(Name=image.format("x86_64"))["Parameter"]["Value"]
    assert arm_ami != x86_ami
    aws = AWS(load_backend("aws").validate_options({"region": REGION}))
    catalogue = {t.name: t for t in describe_instance_types(aws.ec2, REGION)}

    spec, options = _spec_and_options(arm=True)
    plan = _plan(AWS(options), spec, options)
    for name in plan.types.worker + plan.types.scheduler:
        assert "arm64" in catalogue[name].architectures, name
    assert plan.amis == {"scheduler": arm_ami, "worker": arm_ami}
    # Named arm64 types alone say arm64 too; the scheduler follows the workers.
    spec, options = _spec_and_options(worker_vm_types=["m7g.large"])
    plan = _plan(AWS(options), spec, options)
    assert plan.types.worker == ["m7g.large"] and plan.types.scheduler_arch == "arm64"
    assert plan.amis["scheduler"] == arm_ami
    # The default stays x86_64.
    spec, options = _spec_and_options()
    plan = _plan(AWS(options), spec, options)
    assert plan.amis == {"scheduler": x86_ami, "worker": x86_ami}
    assert all("x86_64" in catalogue[n].architectures for n in plan.types.worker)


def test_cpu_and_memory_ranges_choose_within_them(offline_ec2):
    spec, options = _spec_and_options(worker_cpu=[2, 4], worker_memory=["4 GiB", "8 GiB"])
    aws = AWS(options)
    catalogue = {t.name: t for t in describe_instance_types(aws.ec2, REGION)}
    plan = _plan(aws, spec, options)
    assert plan.types.worker
    for name in plan.types.worker:
        info = catalogue[name]
        assert 2 <= info.vcpus <= 4 and 4 * 0.9 * GiB <= info.memory_bytes <= 8 * 1.1 * GiB, info.summary()
    # Without the range, 2 vCPU and 4 GiB means about 4 GiB.
    spec, options = _spec_and_options(worker_cpu=2, worker_memory="4 GiB")
    assert all(catalogue[n].memory_gib < 4.5 for n in _plan(aws, spec, options).types.worker)


def test_the_scheduler_gets_a_gpu_with_gpu_workers_unless_told_not_to(offline_ec2):
    spec, options = _spec_and_options(n_workers=1, worker_gpu=1)
    aws = AWS(options)
    catalogue = {t.name: t for t in describe_instance_types(aws.ec2, REGION)}
    plan = _plan(aws, spec, options)
    assert all(catalogue[n].gpus >= 1 for n in plan.types.worker + plan.types.scheduler)
    spec, options = _spec_and_options(n_workers=1, worker_gpu=1, scheduler_gpu=False)
    assert all(catalogue[n].gpus == 0 for n in _plan(aws, spec, options).types.scheduler)
    spec, options = _spec_and_options(n_workers=1, scheduler_gpu=True)
    assert all(catalogue[n].gpus >= 1 for n in _plan(aws, spec, options).types.scheduler)


@pytest.mark.filterwarnings("ignore:security=False")
def test_use_best_zone_moves_the_scheduler_to_a_zone_with_capacity(offline_ec2, monkeypatch):
    backend = load_backend("aws")
    spec = resolve_cluster_spec(
        {"name": "Best_Zone", "n_workers": 1, "worker_cpu": 1, "worker_memory": "2 GiB", "security": False,
         "use_best_zone": True, "backend": "aws", "backend_options": {"allow_ingress_from": "127.0.0.1/32"}}
    )
    options = backend.validate_spec_options(spec)
    assert options.use_best_zone
    placements = network.find_placements(AWS(options).ec2, options)
    assert len({p.zone for p in placements}) > 1
    full = placements[0].subnet_id
    original = botocore.client.BaseClient._make_api_call

    def first_zone_is_full(self, operation_name, api_params):
        if operation_name == "RunInstances" and api_params["NetworkInterfaces"][0]["SubnetId"] == full:
            raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity", "Message": "none left"}}, operation_name)
        return original(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", first_zone_is_full)
    record = backend.provision(spec, options, None)
    try:
        subnet = record.backend_ids["scheduler_subnet_id"]
        assert subnet == placements[1].subnet_id
        record = backend.scale(record, options, 2, [], None)
        ec2 = offline_ec2.client("ec2", REGION)
        # Every node, those added later too, in the scheduler's zone.
        assert {i["SubnetId"] for i in _live_instances(ec2, spec.name)} == {subnet}
        assert len(record.workers) == 2
    finally:
        monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", original)
        backend.teardown(record, options)
    assert _left(offline_ec2, spec.name)["instances"] == []
