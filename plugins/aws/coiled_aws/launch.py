"""Launching nodes: one batched call per wave, falling back across instance types and markets.

On-demand and spot use RunInstances with a count; ``spot_with_fallback`` uses an instant
CreateFleet over every candidate type, then on-demand for whatever spot could not supply.
Capacity and quota errors move on to the next candidate type; when none is left, a clear error.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from coiled_core.backend import ProvisionError

#: Errors that mean "not this type or market, now": try the next candidate.
CAPACITY_ERRORS = {
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "Unsupported",
    "InsufficientFreeAddressesInSubnet",
}


@dataclass
class LaunchRequest:
    """Everything one wave of identical nodes needs, except how many and which type."""

    ami: str
    subnet_id: str
    security_group_ids: list[str]
    user_data: str
    tags: list[dict]
    instance_profile: str | None
    key_name: str | None = None
    root_volume_gib: int = 50
    #: The image's root device (``RootDeviceName``): the volume size applies to it.
    root_device_name: str = "/dev/xvda"
    use_public_ip: bool = True
    private_ip: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def run_instances_kwargs(self, instance_type: str, count: int, spot: bool) -> dict[str, Any]:
        interface: dict[str, Any] = {
            "DeviceIndex": 0,
            "SubnetId": self.subnet_id,
            "Groups": self.security_group_ids,
            "AssociatePublicIpAddress": self.use_public_ip,
            "DeleteOnTermination": True,
        }
        if self.private_ip:
            interface["PrivateIpAddress"] = self.private_ip
        kwargs: dict[str, Any] = {
            "ImageId": self.ami,
            "InstanceType": instance_type,
            "MinCount": count,
            "MaxCount": count,
            "UserData": self.user_data,
            "NetworkInterfaces": [interface],
            # The node powers itself off when its agent ends; EC2 then deletes it.
            "InstanceInitiatedShutdownBehavior": "terminate",
            "BlockDeviceMappings": [
                {"DeviceName": self.root_device_name, "Ebs": {"VolumeSize": self.root_volume_gib, "DeleteOnTermination": True}}
            ],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": self.tags},
                {"ResourceType": "volume", "Tags": self.tags},
            ],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        }
        if self.instance_profile:
            kwargs["IamInstanceProfile"] = {"Name": self.instance_profile}
        if self.key_name:
            kwargs["KeyName"] = self.key_name
        if spot:
            kwargs["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        return kwargs


def _error_code(error: Exception) -> str:
    return getattr(error, "response", {}).get("Error", {}).get("Code", "")


def run_instances(ec2: Any, request: LaunchRequest, instance_types: list[str], count: int, spot: bool) -> list[dict]:
    """Launch ``count`` nodes in one call, trying each candidate type in turn."""
    from botocore.exceptions import ClientError

    errors = []
    for instance_type in instance_types:
        try:
            return ec2.run_instances(**request.run_instances_kwargs(instance_type, count, spot))["Instances"]
        except ClientError as e:
            if _error_code(e) not in CAPACITY_ERRORS:
                raise
            errors.append(f"{instance_type}: {_error_code(e)}")
    market = "spot" if spot else "on-demand"
    raise ProvisionError(f"no {market} capacity for {count} node(s) of any candidate type ({'; '.join(errors)})")


def create_fleet(ec2: Any, request: LaunchRequest, template_id: str, instance_types: list[str], count: int, version: int = 1) -> list[str]:
    """``spot_with_fallback``: an instant fleet of spot nodes over all candidate types, then
    on-demand nodes for whatever spot could not supply, from version ``version`` of the launch
    template (a number: EC2 Fleet does not take ``$Latest`` or ``$Default``). Returns instance ids."""
    instance_ids: list[str] = []
    for market in ("spot", "on-demand"):
        missing = count - len(instance_ids)
        if missing <= 0:
            break
        response = ec2.create_fleet(
            Type="instant",
            LaunchTemplateConfigs=[
                {
                    "LaunchTemplateSpecification": {"LaunchTemplateId": template_id, "Version": str(version)},
                    "Overrides": [
                        {"InstanceType": t, "SubnetId": request.subnet_id, "Priority": float(i)}
                        for i, t in enumerate(instance_types)
                    ],
                }
            ],
            TargetCapacitySpecification={"TotalTargetCapacity": missing, "DefaultTargetCapacityType": market},
            SpotOptions={"AllocationStrategy": "price-capacity-optimized"},
            OnDemandOptions={"AllocationStrategy": "prioritized"},
            TagSpecifications=[{"ResourceType": "fleet", "Tags": request.tags}],
        )
        for group in response.get("Instances", []):
            instance_ids.extend(group.get("InstanceIds", []))
    if len(instance_ids) < count:
        raise ProvisionError(f"the fleet supplied {len(instance_ids)} of {count} node(s), spot and on-demand together")
    return instance_ids[:count]


def launch_template(ec2: Any, name: str, request: LaunchRequest) -> tuple[str, int]:
    """A launch template holding the node settings a fleet needs (type and market come later):
    its id and version number."""
    data = request.run_instances_kwargs("m5.large", 1, spot=False)
    for key in ("InstanceType", "MinCount", "MaxCount", "InstanceMarketOptions"):
        data.pop(key, None)
    data["UserData"] = base64.b64encode(request.user_data.encode()).decode()
    data["NetworkInterfaces"][0].pop("SubnetId", None)  # the fleet's overrides say where
    template = ec2.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData=data,
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": request.tags}],
    )["LaunchTemplate"]
    return template["LaunchTemplateId"], int(template["LatestVersionNumber"])
