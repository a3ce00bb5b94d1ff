"""Networking for one cluster: its subnet, the scheduler's pre-allocated address, its security group.

Workers learn the scheduler's address before the scheduler has booted, because the scheduler is
launched at an address chosen in advance from the subnet (RunInstances ``PrivateIpAddress``).
So the scheduler and all workers are launched in the same wave; the workers' agents retry until
the scheduler answers.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Any

from coiled_core.backend import ClusterSpecError, CoiledError, dns_label
from coiled_core.backend import client_cidr as ingress_cidr

from coiled_aws.options import AWSOptions

#: Scheduler and dashboard ports: each node has an address of its own, so they can be fixed.
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
#: Opened to ``allow_ingress_from`` with ``allow_ssh``.
SSH_PORT = 22


@dataclass
class Placement:
    vpc_id: str
    subnet_id: str
    zone: str
    cidr: str


def find_placements(ec2: Any, options: AWSOptions) -> list[Placement]:
    """Every subnet the cluster may go to, the preferred one first: the given subnet, else the
    default subnets of the region (or the subnets of ``vpc_id``), in ``zone`` if given.

    Only the first is used unless ``use_best_zone`` lets the scheduler move on to the next zone
    when none of its instance types has capacity in the first.
    """
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
    ordered = sorted(subnets, key=lambda s: s["SubnetId"])
    return [Placement(s["VpcId"], s["SubnetId"], s["AvailabilityZone"], s["CidrBlock"]) for s in ordered]


def find_placement(ec2: Any, options: AWSOptions) -> Placement:
    """The subnet to launch into: the given one, else a default subnet (in ``zone`` if given)."""
    return find_placements(ec2, options)[0]


def placement_of_subnet(ec2: Any, subnet_id: str) -> Placement:
    """The placement of one known subnet (a running cluster's, for nodes added later)."""
    subnet = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]
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
    """``allow_ingress_from`` as a network (the core's rule: a given CIDR, else this client's
    public address as a /32)."""
    return ingress_cidr(options.allow_ingress_from)


def _ip_ranges(cidr: str, description: str) -> dict[str, list[dict[str, str]]]:
    if ipaddress.ip_network(cidr).version == 6:
        return {"Ipv6Ranges": [{"CidrIpv6": cidr, "Description": description}]}
    return {"IpRanges": [{"CidrIp": cidr, "Description": description}]}


def security_group_name(cluster: str) -> str:
    """The group's name, from the cluster's: group names are unique in a VPC regardless of case,
    so ``My_Cluster`` and ``my-cluster`` must not map to one name (:func:`dns_label` tells them
    apart with a hash). The group carries the cluster's exact name in its tags."""
    return dns_label(cluster, max_length=255, prefix="coiled-")


def create_security_group(
    ec2: Any, placement: Placement, cluster: str, cidr: str, tags: list[dict], allow_ssh: bool = False
) -> str:
    """A group admitting the scheduler and dashboard ports (and SSH with ``allow_ssh``) from
    ``cidr`` only, and everything from inside the group (scheduler, workers and nannies talk on
    any port)."""
    group_id = ec2.create_security_group(
        GroupName=security_group_name(cluster),
        Description=f"Dask cluster {cluster} (coiled)",
        VpcId=placement.vpc_id,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}],
    )["GroupId"]
    permissions = [
        {
            "IpProtocol": "tcp",
            "FromPort": SCHEDULER_PORT,
            "ToPort": DASHBOARD_PORT,
            **_ip_ranges(cidr, "client: scheduler and dashboard"),
        },
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id, "Description": "inside the cluster"}]},
    ]
    if allow_ssh:
        permissions.append({"IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT, **_ip_ranges(cidr, "allow_ssh")})
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=permissions)
    return group_id
