"""Networking for one cluster: its subnet, the scheduler's pre-allocated address, its security group.

Workers learn the scheduler's address before the scheduler has booted, because the scheduler is
launched at an address chosen in advance from the subnet (RunInstances ``PrivateIpAddress``).
So the scheduler and all workers are launched in the same wave; the workers' agents retry until
the scheduler answers.
"""

from __future__ import annotations

import ipaddress
import random
import urllib.request
from dataclasses import dataclass
from typing import Any

from coiled_core.backend import ClusterSpecError, CoiledError

from coiled_aws.options import AWSOptions

#: Scheduler and dashboard ports: each node has an address of its own, so they can be fixed.
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
#: Where the client's public address is asked for when allow_ingress_from is not given.
PUBLIC_ADDRESS_URL = "https://checkip.amazonaws.com"


@dataclass
class Placement:
    vpc_id: str
    subnet_id: str
    zone: str
    cidr: str


def find_placement(ec2: Any, options: AWSOptions) -> Placement:
    """The subnet to launch into: the given one, else a default subnet (in ``zone`` if given)."""
    if options.subnet_id:
        subnets = ec2.describe_subnets(SubnetIds=[options.subnet_id])["Subnets"]
    else:
        filters = [{"Name": "default-for-az", "Values": ["true"]}]
        if options.vpc_id:
            filters = [{"Name": "vpc-id", "Values": [options.vpc_id]}]
        if options.zone:
            filters.append({"Name": "availability-zone", "Values": [options.zone]})
        subnets = ec2.describe_subnets(Filters=filters)["Subnets"]
    if not subnets:
        where = f"zone {options.zone}" if options.zone else "this region"
        raise ClusterSpecError(
            f"backend_options: no subnet to launch into in {where}; give subnet_id (or vpc_id) of an "
            "existing subnet, or create a default VPC"
        )
    subnet = sorted(subnets, key=lambda s: s["SubnetId"])[0]
    return Placement(subnet["VpcId"], subnet["SubnetId"], subnet["AvailabilityZone"], subnet["CidrBlock"])


def free_private_address(ec2: Any, placement: Placement, avoid: set[str] = frozenset()) -> str:
    """An address of the subnet no interface uses (AWS reserves the first four and the last)."""
    used = {
        address["PrivateIpAddress"]
        for interface in ec2.describe_network_interfaces(
            Filters=[{"Name": "subnet-id", "Values": [placement.subnet_id]}]
        )["NetworkInterfaces"]
        for address in interface.get("PrivateIpAddresses", [])
    }
    network = ipaddress.ip_network(placement.cidr)
    first, last = int(network.network_address) + 4, int(network.broadcast_address) - 1
    for _ in range(200):
        candidate = str(ipaddress.ip_address(random.randint(first, last)))
        if candidate not in used and candidate not in avoid:
            return candidate
    raise CoiledError(f"subnet {placement.subnet_id} ({placement.cidr}) has no free address for the scheduler")


def client_cidr(options: AWSOptions) -> str:
    """``allow_ingress_from``, or this client's public address as a /32."""
    if options.allow_ingress_from:
        return options.allow_ingress_from
    try:
        with urllib.request.urlopen(PUBLIC_ADDRESS_URL, timeout=5) as response:
            address = ipaddress.ip_address(response.read().decode().strip())
    except (OSError, ValueError):
        raise ClusterSpecError(
            "backend_options: allow_ingress_from is not set and this machine's public address could not be "
            f"detected (asked {PUBLIC_ADDRESS_URL}); give the address range allowed to reach the scheduler, "
            "e.g. backend_options={'allow_ingress_from': '203.0.113.7/32'}"
        ) from None
    return f"{address}/32"


def create_security_group(ec2: Any, placement: Placement, cluster: str, cidr: str, tags: list[dict]) -> str:
    """A group admitting the scheduler and dashboard ports from ``cidr`` only, and everything
    from inside the group (scheduler, workers and nannies talk on any port)."""
    group_id = ec2.create_security_group(
        GroupName=f"coiled-{cluster}",
        Description=f"Dask cluster {cluster} (coiled)",
        VpcId=placement.vpc_id,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}],
    )["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=group_id,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": SCHEDULER_PORT,
                "ToPort": DASHBOARD_PORT,
                "IpRanges": [{"CidrIp": cidr, "Description": "client: scheduler and dashboard"}],
            },
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id, "Description": "inside the cluster"}]},
        ],
    )
    return group_id
