"""The published client policy (``coiled_aws/client-policy.json``) allows exactly the AWS actions
the client calls in a cluster's whole lifecycle on the offline EC2: no more, no less.

Every call is recorded, with its parameters, through botocore's ``before-parameter-build`` event
on the sessions the backend makes
(``coiled_aws.session.SESSION_HOOKS``). An API operation is named as the IAM action that
authorises it: mostly the same name, a few S3 operations aside (:data:`S3_ACTIONS`), plus the
actions AWS authorises on the side of a call (:func:`implied_actions`: tagging on create, passing
a role to EC2, a fleet running instances).
"""

from __future__ import annotations

import json
from importlib import resources

import pytest
from aws_node_roles import allowed

from coiled_core.plugins import load_backend
from coiled_core.security import ClusterTLS
from coiled_core.spec import resolve_cluster_spec

from coiled_aws import iam, session
from coiled_aws.instance_types import clear_cache
from coiled_aws.options import AWSOptions
from coiled_aws.session import AWS

pytestmark = pytest.mark.usefixtures("offline_ec2")

REGION = "us-east-1"
OPTIONS = {"region": REGION, "allow_ingress_from": "127.0.0.1/32"}

#: S3 operations whose IAM action has another name (the service authorisation reference).
S3_ACTIONS = {
    "HeadBucket": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "HeadObject": "s3:GetObject",
    "DeleteObjects": "s3:DeleteObject",
    "PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
    "PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
}


def action_of(service: str, operation: str) -> str:
    if service == "s3" and operation in S3_ACTIONS:
        return S3_ACTIONS[operation]
    return f"{service}:{operation}"


def implied_actions(action: str, params: dict) -> set[str]:
    """What AWS also authorises for ``action`` called with ``params``."""
    implied = set()
    creates = ("ec2:RunInstances", "ec2:CreateSecurityGroup", "ec2:CreateLaunchTemplate", "ec2:CreateFleet")
    if action in creates and params.get("TagSpecifications"):
        implied.add("ec2:CreateTags")  # tags given on create are authorised as CreateTags
    if action == "ec2:RunInstances" and params.get("IamInstanceProfile"):
        implied.add("iam:PassRole")
    if action == "iam:AddRoleToInstanceProfile":
        implied.add("iam:PassRole")  # its caller must be allowed to pass the role
    if action == "ec2:CreateFleet":
        implied |= {"ec2:RunInstances", "ec2:CreateTags", "iam:PassRole"}  # it launches from a template
    if action in ("iam:CreateRole", "iam:CreateInstanceProfile") and params.get("Tags"):
        implied.add("iam:TagRole" if action == "iam:CreateRole" else "iam:TagInstanceProfile")
    return implied


class Recorder:
    """Records the IAM action of every call made through a session of the backend."""

    def __init__(self):
        self.actions: set[str] = set()
        self.implied: set[str] = set()
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, boto_session) -> None:
        boto_session.events.register("before-parameter-build", self.record)

    def record(self, model, params, **kwargs) -> None:
        action = action_of(model.service_model.signing_name, model.name)
        self.actions.add(action)
        self.implied |= implied_actions(action, params)
        self.calls.append((action, params))

    def __enter__(self) -> Recorder:
        session.SESSION_HOOKS.append(self)
        return self

    def __exit__(self, *exc) -> None:
        session.SESSION_HOOKS.remove(self)


def client_policy() -> dict:
    return json.loads(resources.files("coiled_aws").joinpath("client-policy.json").read_text())


def allowed_actions(policy: dict) -> set[str]:
    found = set()
    for statement in policy["Statement"]:
        if statement["Effect"] == "Allow":
            actions = statement["Action"]
            found.update([actions] if isinstance(actions, str) else actions)
    return found


def _spec(name, options, **extra):
    values = {"name": name, "n_workers": 1, "worker_cpu": 1, "worker_memory": "2 GiB", "security": True}
    return resolve_cluster_spec({**values, **extra, "backend_options": options})


def _lifecycle(backend, spec):
    """Everything a user does with one cluster, through the hooks the core calls."""
    options = backend.validate_options(spec.backend_options)
    backend.tls_policy(options)
    backend.preflight(spec, options)
    assert backend.claim_name(spec.name, options)
    tls = ClusterTLS.generate(spec.name) if spec.security else None
    record = backend.provision(spec, options, tls)
    try:
        backend.describe(spec.name, options)
        assert [r.name for r in backend.list_clusters(options)] == [spec.name]
        record = backend.scale(record, options, 2, [], tls)
        record = backend.scale(record, options, 1, [record.workers[0].name], tls)
        backend.dashboard_url(record, options)
        backend.logs(record, options, 10)
    finally:
        backend.teardown(record, options)
    backend.gc(options)
    return record


def test_the_client_policy_allows_exactly_what_a_lifecycle_calls(offline_ec2):
    # An administrator's one-time steps, not the client's: the boundary and a KMS key.
    assert iam.main([]) == 0  # what the README tells an administrator to run once
    key = offline_ec2.client("kms", REGION).create_key(Description="coiled client policy test")["KeyMetadata"]
    clear_cache()  # the instance-type catalogue is fetched once per process: fetch it here
    backend = load_backend("aws")
    with Recorder() as recorder:
        _lifecycle(backend, _spec("policy-on-demand", {**OPTIONS, "kms_key_id": key["KeyId"]}, environ={"A": "b"}))
        _lifecycle(backend, _spec("policy-spot", {**OPTIONS, "spot_policy": "spot_with_fallback"}, security=False))
    called = recorder.actions | recorder.implied
    allowed = allowed_actions(client_policy())
    assert sorted(allowed - called) == [], "the policy allows actions the client never calls"
    assert sorted(called - allowed) == [], "the client calls actions the policy does not allow"


def test_the_published_policy_is_well_formed():
    policy = client_policy()
    assert policy["Version"] == "2012-10-17"
    sids = [s["Sid"] for s in policy["Statement"]]
    assert len(sids) == len(set(sids))
    for statement in policy["Statement"]:
        assert statement["Effect"] in ("Allow", "Deny") and statement["Resource"]
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all("*" not in a for a in actions), "no wildcard actions"
        # IAM permissions reach only the backend's own roles, profiles and boundary.
        for resource in statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]:
            if resource.startswith("arn:aws:iam::"):
                assert resource.rsplit("/", 1)[1].startswith(iam.ROLE_PREFIX), resource


TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


@pytest.fixture
def team_profile(offline_ec2):
    """An instance profile an administrator made for every node, with the documented policy."""
    admin_iam = offline_ec2.client("iam")
    name = "team-dask-nodes"
    policy = iam.shared_node_policy(AWS(AWSOptions(region=REGION)))
    admin_iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))
    admin_iam.put_role_policy(RoleName=name, PolicyName="dask-nodes", PolicyDocument=json.dumps(policy))
    profile = admin_iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    admin_iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    yield profile["Arn"], policy
    admin_iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)
    admin_iam.delete_instance_profile(InstanceProfileName=name)
    admin_iam.delete_role_policy(RoleName=name, PolicyName="dask-nodes")
    admin_iam.delete_role(RoleName=name)


def test_a_pre_created_instance_profile_needs_no_iam_permission_but_pass_role(offline_ec2, team_profile):
    arn, policy = team_profile
    backend = load_backend("aws")
    spec = _spec("team-profile", {**OPTIONS, "iam_instance_profile": arn}, environ={"A": "b"})
    with Recorder() as recorder:
        _lifecycle(backend, spec)
    assert {a for a in recorder.actions | recorder.implied if a.startswith("iam:")} == {"iam:PassRole"}
    # Every node it launched, scale-up included, ran with that profile...
    launches = [params for action, params in recorder.calls if action == "ec2:RunInstances"]
    assert sum(p["MaxCount"] for p in launches) == 3
    assert all(p["IamInstanceProfile"] == {"Name": "team-dask-nodes"} for p in launches)
    # ...and the profile, its role and its policy are as the administrator made them.
    admin_iam = offline_ec2.client("iam")
    profile = admin_iam.get_instance_profile(InstanceProfileName="team-dask-nodes")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == ["team-dask-nodes"]
    assert admin_iam.get_role_policy(RoleName="team-dask-nodes", PolicyName="dask-nodes")["PolicyDocument"] == policy


def test_the_documented_shared_node_policy_covers_both_node_roles():
    aws = AWS(AWSOptions(region=REGION))
    policy = iam.shared_node_policy(aws)
    prefix = f"arn:aws:ssm:{REGION}:{aws.account_id}:parameter/coiled/some-cluster/secrets"
    for role in ("scheduler", "worker"):
        for document in (iam.node_policy(aws, "some-cluster", role),):
            for statement in document["Statement"]:
                for action in statement["Action"]:
                    for resource in statement["Resource"]:
                        assert allowed([policy], action, resource) or "Condition" in statement, (action, resource)
        assert allowed([policy], "ssm:GetParametersByPath", f"{prefix}/{role}")
        assert allowed([policy], "ssm:DeleteParameters", f"{prefix}/{role}/{role}_key")


def test_the_documented_policies_print_for_this_account(capsys):
    aws = AWS(AWSOptions(region=REGION))
    assert iam.main(["--print", "node-policy", "--region", REGION]) == 0
    assert json.loads(capsys.readouterr().out) == iam.shared_node_policy(aws)
    assert iam.main(["--print", "boundary"]) == 0
    assert json.loads(capsys.readouterr().out) == iam.boundary_policy(aws)
