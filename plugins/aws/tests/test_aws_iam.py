"""The node roles on the offline EC2: one per cluster, account and region, least privilege.

What a role may do is read from IAM as the nodes' instance profile names it, and judged with
moto's own IAM policy evaluator (``moto.iam.access_control.IAMPolicy``).
"""

from __future__ import annotations

import json

import pytest
from aws_node_roles import actions_of, allowed, instances, role_of, role_policies

from coiled_core.plugins import load_backend
from coiled_core.spec import resolve_cluster_spec

pytestmark = pytest.mark.usefixtures("offline_ec2")

OPTIONS = {"allow_ingress_from": "127.0.0.1/32"}


def _spec(name, region, **extra):
    values = {"name": name, "n_workers": 1, "worker_cpu": 1, "worker_memory": "2 GiB", "security": False}
    return resolve_cluster_spec({**values, **extra, "backend_options": {**OPTIONS, "region": region}})


def _account(simulator):
    return simulator.credentials.account_id


def _options(backend, record):
    """The options ``record``'s cluster was made with (each test's are in its spec)."""
    return backend.validate_options(record.spec["backend_options"])


@pytest.fixture
def backend():
    return load_backend("aws")


def test_same_cluster_name_in_two_regions_gets_two_roles(offline_ec2, backend):
    """Clusters named alike in two regions must not share, overwrite or delete a node role."""
    account = _account(offline_ec2)
    records = {}
    try:
        for region in ("us-east-1", "us-west-2"):
            spec = _spec("prod", region)
            records[region] = backend.provision(spec, backend.validate_options(spec.backend_options))
        roles = {region: {role_of(offline_ec2, i) for i in instances(offline_ec2, "prod", region)} for region in records}
        assert not roles["us-east-1"] & roles["us-west-2"]
        for region, names in roles.items():
            for role in names:
                assert role.startswith("coiled-node-") and len(role) <= 64
                own = f"arn:aws:ssm:{region}:{account}:parameter/coiled/prod/secrets/worker/environ"
                documents = role_policies(offline_ec2, role)
                assert any(json.dumps(d).count(f":{region}:") for d in documents)
                other = "us-west-2" if region == "us-east-1" else "us-east-1"
                assert not allowed(documents, "ssm:GetParameter", own.replace(region, other))
        # Ending one leaves the other's roles and policies as they were.
        west = records.pop("us-west-2")
        backend.teardown(west, _options(backend, west))
        iam = offline_ec2.client("iam")
        for role in roles["us-east-1"]:
            assert iam.get_role(RoleName=role)["Role"]["RoleName"] == role
            assert role_policies(offline_ec2, role)
    finally:
        for record in records.values():
            backend.teardown(record, _options(backend, record))


def test_node_roles_cannot_terminate_instances(offline_ec2, backend):
    """Nodes power themselves off (shutdown behaviour 'terminate'): they never call EC2."""
    spec = _spec("no-terminate", "us-east-1")
    record = backend.provision(spec, backend.validate_options(spec.backend_options))
    try:
        for instance in instances(offline_ec2, spec.name, "us-east-1"):
            documents = role_policies(offline_ec2, role_of(offline_ec2, instance))
            arn = f"arn:aws:ec2:us-east-1:{_account(offline_ec2)}:instance/{instance['InstanceId']}"
            assert not allowed(documents, "ec2:TerminateInstances", arn)
            assert not any(a.startswith("ec2:") for a in actions_of(documents))
    finally:
        backend.teardown(record, _options(backend, record))



def test_every_node_role_gets_the_permissions_boundary(offline_ec2, backend):
    """Whatever inline policy a client writes, a node role cannot exceed the boundary."""
    spec = _spec("bounded", "us-east-1")
    record = backend.provision(spec, backend.validate_options(spec.backend_options))
    try:
        iam = offline_ec2.client("iam")
        expected = f"arn:aws:iam::{_account(offline_ec2)}:policy/coiled-node-boundary"
        assert iam.get_policy(PolicyArn=expected)["Policy"]["PolicyName"] == "coiled-node-boundary"
        roles = {role_of(offline_ec2, i) for i in instances(offline_ec2, spec.name, "us-east-1")}
        assert len(roles) == 2
        for role in roles:
            assert iam.get_role(RoleName=role)["Role"]["PermissionsBoundary"]["PermissionsBoundaryArn"] == expected
    finally:
        backend.teardown(record, _options(backend, record))


def test_a_given_permissions_boundary_must_exist_before_anything_is_made(offline_ec2, backend):
    from coiled_core.errors import ClusterSpecError

    spec = _spec("no-boundary", "us-east-1")
    options = backend.validate_options({**spec.backend_options, "permissions_boundary": "team-boundary"})
    with pytest.raises(ClusterSpecError, match="permissions_boundary '.*policy/team-boundary' does not exist"):
        backend.provision(spec, options)
    assert instances(offline_ec2, spec.name, "us-east-1") == []
    iam = offline_ec2.client("iam")
    document = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": "*"}]}
    arn = iam.create_policy(PolicyName="team-boundary", PolicyDocument=json.dumps(document))["Policy"]["Arn"]
    try:
        record = backend.provision(spec, options)
        try:
            roles = {role_of(offline_ec2, i) for i in instances(offline_ec2, spec.name, "us-east-1")}
            assert {iam.get_role(RoleName=r)["Role"]["PermissionsBoundary"]["PermissionsBoundaryArn"] for r in roles} == {arn}
        finally:
            backend.teardown(record, options)
    finally:
        iam.delete_policy(PolicyArn=arn)


def test_node_roles_may_not_write_pins_nor_any_build_but_their_own(offline_ec2, backend):
    """The client pins the packs nodes may run under pins/; a node (compromised, say) can write
    neither a pin nor a pack where another cluster's nodes would take it for their own build."""
    spec = _spec("no-planting", "us-east-1")
    record = backend.provision(spec, backend.validate_options(spec.backend_options))
    try:
        build = record.backend_ids["build_id"]
        assert build
        bucket = f"arn:aws:s3:::coiled-artifacts-{_account(offline_ec2)}-us-east-1"
        iam = offline_ec2.client("iam")
        boundary = iam.get_policy_version(
            PolicyArn=f"arn:aws:iam::{_account(offline_ec2)}:policy/coiled-node-boundary", VersionId="v1"
        )["PolicyVersion"]["Document"]
        boundary = json.loads(boundary) if isinstance(boundary, str) else boundary
        for instance in instances(offline_ec2, spec.name, "us-east-1"):
            documents = role_policies(offline_ec2, role_of(offline_ec2, instance))
            for key in ("pins/abc-py3.11-x86_64.json", "envs/abc-py3.11-x86_64/manifest.json",
                        "envs/abc-py3.11-x86_64/builds/another-build/manifest.json", "agent/coiled_core-x.zip"):
                assert not allowed(documents, "s3:PutObject", f"{bucket}/{key}"), key
            assert not allowed([boundary], "s3:PutObject", f"{bucket}/pins/abc-py3.11-x86_64.json")
            assert not allowed([boundary], "s3:PutObject", f"{bucket}/agent/coiled_core-x.zip")
            assert allowed(documents, "s3:PutObject", f"{bucket}/envs/abc-py3.11-x86_64/builds/{build}/manifest.json")
            assert allowed(documents, "s3:GetObject", f"{bucket}/envs/abc-py3.11-x86_64/builds/another-build/x.tar.zst")
    finally:
        backend.teardown(record, _options(backend, record))
