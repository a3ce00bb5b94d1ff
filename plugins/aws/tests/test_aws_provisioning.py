"""AWS provisioning details on the offline EC2: what is created, how it is secured, and that a
fault at any step leaves nothing behind."""

import base64
import io
import warnings
import zipfile
from datetime import datetime, timedelta, timezone

import botocore.client
import pytest
from botocore.exceptions import ClientError

from aws_node_roles import node_config

from coiled_core.backend import NodeConfig, worker_name_prefix
from coiled_core.cluster import check_cluster
from coiled_core.errors import CoiledError, ProvisionError
from coiled_core.plugins import load_backend
from coiled_core.spec import resolve_cluster_spec

from coiled_aws.bootstrap import USER_DATA_LIMIT
from coiled_aws.options import AWSOptions
from coiled_aws.plugin import _Boot
from coiled_aws.session import AWS

pytestmark = pytest.mark.usefixtures("offline_ec2")

OPTIONS = {"region": "us-east-1", "allow_ingress_from": "127.0.0.1/32"}


def _spec(name, **extra):
    values = {"name": name, "n_workers": 2, "worker_cpu": 1, "worker_memory": "2 GiB", "security": False}
    values.update(extra)
    return resolve_cluster_spec({**values, "backend_options": OPTIONS})


def _tagged(simulator, name):
    ec2 = simulator.client("ec2", "us-east-1")
    tag = [{"Name": "tag:coiled:cluster", "Values": [name]}]
    instances = [
        i
        for r in ec2.describe_instances(Filters=tag)["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    groups = ec2.describe_security_groups(Filters=tag)["SecurityGroups"]
    params = simulator.client("ssm", "us-east-1").get_parameters_by_path(Path=f"/coiled/{name}", Recursive=True)["Parameters"]
    return instances, groups, params


@pytest.fixture
def backend():
    backend = load_backend("aws")
    return backend, backend.validate_options(OPTIONS)


def test_resources_are_tagged_secured_and_small(offline_ec2, backend):
    backend, options = backend
    from coiled_core.security import ClusterTLS

    spec = _spec("provision-details", security=True)
    record = backend.provision(spec, options, ClusterTLS.generate(spec.name))
    try:
        # The node agent serves the dashboard over HTTPS with the scheduler's certificate.
        assert record.dashboard_url.startswith("https://")
        instances, groups, params = _tagged(offline_ec2, spec.name)
        assert len(instances) == 3 and len(groups) == 1
        for instance in instances:
            tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
            assert {"coiled:cluster", "coiled:owner", "coiled:created-at", "coiled:expires-at", "coiled:role"} <= set(tags)
        roles = sorted(next(t["Value"] for t in i["Tags"] if t["Key"] == "coiled:role") for i in instances)
        assert roles == ["scheduler", "worker", "worker"]
        # The scheduler and dashboard ports admit the client's range only; the rest is in-group.
        permissions = groups[0]["IpPermissions"]
        public = [p for p in permissions if p.get("IpRanges")]
        assert public[0]["FromPort"] == 8786 and public[0]["ToPort"] == 8787
        assert [r["CidrIp"] for r in public[0]["IpRanges"]] == ["127.0.0.1/32"]
        # Private keys live in SSM as SecureStrings, never in user data.
        ec2 = offline_ec2.client("ec2", "us-east-1")
        for instance in instances:
            data = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
            script = base64.b64decode(data["UserData"]["Value"]).decode()
            assert "PRIVATE KEY" not in script
            assert len(script.encode()) < USER_DATA_LIMIT
            config = node_config(script)
            assert config.tls is None and config.tls_file is None and config.environ == {}
            assert config.addon.object == "coiled_aws.node:AWSNode"
            behaviour = ec2.describe_instance_attribute(
                InstanceId=instance["InstanceId"], Attribute="instanceInitiatedShutdownBehavior"
            )
            assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        secrets = [p for p in params if "/secrets/" in p["Name"]]
        assert secrets and all(p["Type"] == "SecureString" for p in secrets)
    finally:
        backend.teardown(record, options)
    assert _tagged(offline_ec2, spec.name) == ([], [], [])


def test_scale_down_terminates_exactly_the_retired_workers(offline_ec2, backend):
    backend, options = backend
    record = backend.provision(_spec("scale-exact", n_workers=3), options)
    try:
        # One worker per instance, named after it: scale-down knows which machine to stop.
        assert {w.name for w in record.workers} == {f"{worker_name_prefix(record.name)}{w.backend_ids['instance_id']}" for w in record.workers}
        doomed = record.workers[1].name
        after = backend.scale(record, options, 2, [doomed])
        assert sorted(w.name for w in after.workers) == sorted(w.name for w in record.workers if w.name != doomed)
        grown = backend.scale(after, options, 4, [])
        assert len(grown.workers) == 4
    finally:
        backend.teardown(record, options)


def test_node_configs_are_valid_node_protocol_naming_the_aws_add_on(offline_ec2):
    """What a node reads from its user data is a NodeConfig the agent accepts (a round trip),
    names the AWS add-on with each role's SSM path, and holds no environ and no TLS keys."""
    spec = _spec("node-protocol", security=True, environ={"TOKEN": "not-in-user-data"})
    aws = AWS(AWSOptions.model_validate(OPTIONS))
    boot = _Boot(aws, spec, AWSOptions.model_validate(OPTIONS))
    scripts = {"scheduler": boot.script(boot.scheduler()), "worker": boot.script(boot.worker("tls://10.0.0.5:8786", None))}
    for role, script in scripts.items():
        assert "not-in-user-data" not in script and "PRIVATE KEY" not in script
        config = node_config(script)
        assert NodeConfig.from_json(config.to_json()) == config
        assert config.role == role and config.cluster_name == spec.name
        assert config.environ == {} and config.tls is None and config.tls_file is None
        assert config.log_file == "node.log" and config.log_max_bytes > 0
        assert config.addon.object == "coiled_aws.node:AWSNode"
        settings = config.addon.settings
        assert settings["secrets_prefix"] == f"/coiled/{spec.name}/secrets/{role}"
        assert settings["log_key"] == f"logs/{spec.name}/{{instance_id}}.log"
        assert settings["log_bucket"] == boot.bucket and settings["expected_bucket_owner"] == aws.account_id
        assert settings["region"] == "us-east-1"
    scheduler, worker = (node_config(scripts[role]) for role in ("scheduler", "worker"))
    assert (scheduler.scheduler.port, scheduler.scheduler.dashboard_port) == (8786, 8787)
    assert worker.scheduler_address == "tls://10.0.0.5:8786" and worker.workers.count == 1
    assert worker.workers.name_prefix == worker_name_prefix(spec.name)
    # Only the scheduler, whose end is the cluster's, deletes every role's secrets.
    assert f"/coiled/{spec.name}/secrets/worker/worker_key" in scheduler.addon.settings["delete_on_end"]
    assert "delete_on_end" not in worker.addon.settings
    # The agent bundle the nodes fetch carries the add-on, so the node can import it.
    s3 = offline_ec2.client("s3", "us-east-1")
    bundle = s3.get_object(Bucket=boot.bundle.bucket, Key=boot.bundle.key)["Body"].read()
    assert {"coiled_aws/__init__.py", "coiled_aws/node.py"} <= set(zipfile.ZipFile(io.BytesIO(bundle)).namelist())


def _set_created_at(simulator, name, when):
    """Make cluster ``name`` look launched at ``when`` (its created-at and expires-at tags)."""
    ec2 = simulator.client("ec2", "us-east-1")
    ids = [i["InstanceId"] for i in _tagged(simulator, name)[0]]
    tags = [{"Key": "coiled:created-at", "Value": when.isoformat(timespec="seconds")},
            {"Key": "coiled:expires-at", "Value": (when + timedelta(hours=1)).isoformat(timespec="seconds")}]
    ec2.create_tags(Resources=ids, Tags=tags)


def test_gc_spares_a_live_cluster_within_its_lifetime_and_removes_one_past_it(offline_ec2, backend):
    backend, options = backend
    spec = _spec("gc-lifetime", n_workers=1, cluster_timeout="1h")
    record = backend.provision(spec, options)
    try:
        # Live, and within its lifetime (also past its cap by less than the grace): left alone.
        for age in (timedelta(0), timedelta(hours=1, minutes=2)):
            _set_created_at(offline_ec2, spec.name, datetime.now(timezone.utc) - age)
            assert backend.gc(options) == []
            assert backend.describe(spec.name, options).state.is_live
            assert len(_tagged(offline_ec2, spec.name)[0]) == 2
        # Past its cap by more than EXPIRY_GRACE: its node failed to end it, gc does.
        _set_created_at(offline_ec2, spec.name, datetime.now(timezone.utc) - timedelta(hours=2))
        removed = backend.gc(options)
        assert any("terminated 2 instance(s) of 'gc-lifetime'" in line for line in removed)
        assert _tagged(offline_ec2, spec.name) == ([], [], [])
    finally:
        backend.teardown(record, options)


STEPS = [
    ("ec2", "CreateSecurityGroup"),
    ("iam", "CreateRole"),
    ("ssm", "PutParameter"),
    ("ec2", "RunInstances"),  # the scheduler
    ("ec2", "RunInstances#2"),  # the workers
]


@pytest.mark.parametrize("service, operation", STEPS, ids=[op for _, op in STEPS])
def test_a_fault_at_any_step_leaves_nothing(offline_ec2, backend, monkeypatch, service, operation):
    backend, options = backend
    name = f"fault-{operation.lower().replace('#', '-')}"
    operation, _, nth = operation.partition("#")
    seen = {"count": 0}
    original = botocore.client.BaseClient._make_api_call

    def failing(self, operation_name, api_params):
        if self.meta.service_model.service_name == service and operation_name == operation:
            seen["count"] += 1
            if seen["count"] == int(nth or 1):
                raise ClientError({"Error": {"Code": "InternalError", "Message": "injected fault"}}, operation_name)
        return original(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", failing)
    with pytest.raises(ProvisionError, match="injected fault"):
        backend.provision(_spec(name), options)
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", original)
    assert _tagged(offline_ec2, name) == ([], [], [])


def test_missing_credentials_fail_before_anything(monkeypatch, backend):
    backend, options = backend
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(CoiledError, match="no AWS credentials"):
        backend.provision(_spec("no-credentials"), options)


def test_undetectable_client_address_asks_for_allow_ingress_from(monkeypatch, backend):
    from coiled_core import ingress

    backend, _ = backend
    monkeypatch.setattr(ingress, "PUBLIC_ADDRESS_URL", "http://127.0.0.1:9/unreachable")
    options = backend.validate_options({"region": "us-east-1"})
    with pytest.raises(CoiledError, match="allow_ingress_from"):
        backend.provision(_spec("no-ingress"), options)


def test_capacity_error_falls_back_to_the_next_instance_type(offline_ec2, backend, monkeypatch):
    backend, options = backend
    original = botocore.client.BaseClient._make_api_call
    tried = []

    def short_of_capacity(self, operation_name, api_params):
        if operation_name == "RunInstances":
            tried.append(api_params["InstanceType"])
            if len(tried) == 2:  # the workers' first choice has no capacity
                raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity", "Message": "none left"}}, operation_name)
        return original(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", short_of_capacity)
    record = backend.provision(_spec("capacity-fallback"), options)
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", original)
    try:
        assert len(tried) == 3 and tried[1] != tried[2]
        assert len(record.workers) == 2
    finally:
        backend.teardown(record, options)


@pytest.mark.parametrize("policy", ["spot", "spot_with_fallback"])
def test_spot_policies_launch_all_workers_in_one_call(offline_ec2, backend, policy):
    backend, _ = backend
    options = backend.validate_options({**OPTIONS, "spot_policy": policy})
    spec = resolve_cluster_spec(
        {"name": f"market-{policy.replace('_', '-')}", "n_workers": 3, "worker_cpu": 1, "worker_memory": "2 GiB",
         "security": False, "backend_options": options.model_dump()}
    )
    record = backend.provision(spec, options)
    try:
        assert len(record.workers) == 3
    finally:
        backend.teardown(record, options)
    assert _tagged(offline_ec2, spec.name) == ([], [], [])


def test_security_off_on_public_addresses_warns_loudly(caplog):
    """Without TLS, whoever reaches a public scheduler runs code on the cluster: the core says so
    before anything exists, naming who may connect (the rule every backend shares)."""
    with pytest.warns(UserWarning, match=r"security=False: cluster 'exposed' runs WITHOUT TLS.*127\.0\.0\.1/32"):
        check_cluster(name="exposed", backend="aws", backend_options=OPTIONS, security=False, n_workers=0)
    assert any("security=False" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_security_off_on_private_addresses_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        check_cluster(name="private-only", backend="aws", backend_options={**OPTIONS, "use_public_ip": False},
                      security=False, n_workers=0)
