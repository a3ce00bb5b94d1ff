"""Helpers for the AWS tests: the instances of a cluster, the node config in their user data, the
node roles they run with, and what those roles may do, judged with moto's own IAM policy
evaluator."""

from __future__ import annotations

import json

from moto.iam.access_control import IAMPolicy, PermissionResult


def instances(simulator, name, region):
    """The instances of cluster ``name`` in ``region`` that are not terminated."""
    ec2 = simulator.client("ec2", region)
    tag = [{"Name": "tag:coiled:cluster", "Values": [name]}]
    return [
        i
        for r in ec2.describe_instances(Filters=tag)["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]


def node_config(script):
    """The node config (a ``NodeConfig``) a boot script writes to ``node.json``."""
    from coiled_core.backend import NodeConfig

    text = script.split("<<'COILED_NODE_JSON'\n", 1)[1].split("\nCOILED_NODE_JSON", 1)[0]
    return NodeConfig.from_json(text)


def role_of(simulator, instance):
    """The role inside the instance profile an instance was launched with."""
    profile_name = instance["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]
    iam = simulator.client("iam")
    return iam.get_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]["Roles"][0]["RoleName"]


def role_policies(simulator, role):
    """Every inline policy document of ``role``, as dicts."""
    iam = simulator.client("iam")
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    return [iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"] for n in names]


def allowed(documents, action, resource="*"):
    """Whether one of ``documents`` allows ``action`` on ``resource`` (and none denies it)."""
    results = [IAMPolicy(json.dumps(d)).is_action_permitted(action, resource) for d in documents]
    return PermissionResult.DENIED not in results and PermissionResult.PERMITTED in results


def actions_of(documents):
    """Every action the statements of ``documents`` name."""
    found = set()
    for document in documents:
        for statement in document["Statement"]:
            action = statement.get("Action", [])
            found.update([action] if isinstance(action, str) else action)
    return found
