"""A cluster's secrets on AWS, on the offline EC2: who can read them, what encrypts them, that
none is in user data, and that they end with the cluster.

What a node role may do is read from IAM as the nodes' instance profiles name it and judged with
moto's own IAM policy evaluator (see ``aws_node_roles.allowed``).
"""

from __future__ import annotations

import base64
import os

import pytest
from aws_node_roles import allowed, instances, node_config, role_of, role_policies

from coiled_core.errors import ClusterSpecError
from coiled_core.plugins import load_backend
from coiled_core.security import ClusterTLS, delete_tls
from coiled_core.spec import resolve_cluster_spec
from coiled_core.store import Store
from coiled_core.testing.contract import wait_until

pytestmark = pytest.mark.usefixtures("offline_ec2")

REGION = "us-east-1"
OPTIONS = {"region": REGION, "allow_ingress_from": "127.0.0.1/32"}
#: A value that must never be found outside SSM's SecureStrings.
SECRET = "s3cr3t-token-value-7f1c"


def _spec(name, options=None, **extra):
    values = {"name": name, "n_workers": 1, "worker_cpu": 1, "worker_memory": "2 GiB", "security": True}
    return resolve_cluster_spec({**values, **extra, "backend_options": {**OPTIONS, **(options or {})}})


@pytest.fixture
def backend():
    return load_backend("aws")


@pytest.fixture
def provisioned(backend):
    """Provision specs (their TLS material made and handed over, as the core does); tear down
    afterwards."""
    records = []

    def provision(spec):
        options = backend.validate_options(spec.backend_options)
        tls = ClusterTLS.generate(spec.name) if spec.security else None
        record = backend.provision(spec, options, tls)
        records.append((record, options))
        return record

    yield provision
    for record, options in records:
        backend.teardown(record, options)


def _parameters(simulator, name):
    """Every parameter of cluster ``name``, by name, with its metadata (KeyId, Type)."""
    ssm = simulator.client("ssm", REGION)
    found = ssm.describe_parameters(ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": [f"/coiled/{name}"]}])
    return {p["Name"]: p for p in found["Parameters"]}


def _secret_parameters(simulator, name):
    """The names of cluster ``name``'s secrets: every parameter but its spec and its claim."""
    records = {f"/coiled/{name}/spec", f"/coiled/{name}/claim"}
    return sorted(set(_parameters(simulator, name)) - records)


def _arn(simulator, path):
    return f"arn:aws:ssm:{REGION}:{simulator.credentials.account_id}:parameter{path}"


def _roles_by_node_role(simulator, name):
    roles = {}
    for instance in instances(simulator, name, REGION):
        node_role = next(t["Value"] for t in instance["Tags"] if t["Key"] == "coiled:role")
        roles.setdefault(node_role, set()).add(role_of(simulator, instance))
    return roles


def test_a_worker_node_cannot_read_the_scheduler_key(offline_ec2, provisioned):
    spec = _spec("key-separation", environ={"TOKEN": SECRET})
    provisioned(spec)
    prefix = f"/coiled/{spec.name}/secrets"
    names = set(_parameters(offline_ec2, spec.name))
    assert {f"{prefix}/scheduler/scheduler_key", f"{prefix}/worker/worker_key"} <= names
    # Each role's path holds its own key material only.
    assert not any(n.startswith(f"{prefix}/worker/") and "scheduler" in n for n in names)
    assert not any(n.startswith(f"{prefix}/scheduler/") and "worker" in n for n in names)
    ssm = offline_ec2.client("ssm", REGION)
    scheduler_key = ssm.get_parameter(Name=f"{prefix}/scheduler/scheduler_key", WithDecryption=True)["Parameter"]["Value"]
    worker_key = ssm.get_parameter(Name=f"{prefix}/worker/worker_key", WithDecryption=True)["Parameter"]["Value"]
    assert "PRIVATE KEY" in scheduler_key and scheduler_key != worker_key

    roles = _roles_by_node_role(offline_ec2, spec.name)
    assert len(roles["scheduler"]) == len(roles["worker"]) == 1 and roles["scheduler"] != roles["worker"]
    worker_policies = role_policies(offline_ec2, roles["worker"].pop())
    scheduler_policies = role_policies(offline_ec2, roles["scheduler"].pop())
    for action in ("ssm:GetParameter", "ssm:GetParameters"):
        assert allowed(worker_policies, action, _arn(offline_ec2, f"{prefix}/worker/worker_key"))
        assert not allowed(worker_policies, action, _arn(offline_ec2, f"{prefix}/scheduler/scheduler_key"))
        assert allowed(scheduler_policies, action, _arn(offline_ec2, f"{prefix}/scheduler/scheduler_key"))
    assert not allowed(worker_policies, "ssm:GetParametersByPath", _arn(offline_ec2, f"{prefix}/scheduler"))
    assert not allowed(worker_policies, "ssm:GetParametersByPath", _arn(offline_ec2, prefix))
    assert not allowed(worker_policies, "ssm:GetParameter", _arn(offline_ec2, f"/coiled/{spec.name}/spec"))
    # Only the scheduler, whose end is the cluster's, may delete the cluster's secrets.
    assert allowed(scheduler_policies, "ssm:DeleteParameters", _arn(offline_ec2, f"{prefix}/worker/worker_key"))
    assert not allowed(worker_policies, "ssm:DeleteParameters", _arn(offline_ec2, f"{prefix}/worker/worker_key"))
    assert not allowed(scheduler_policies, "ssm:DeleteParameters", _arn(offline_ec2, "/coiled/other/secrets/worker/worker_key"))


def test_secrets_are_encrypted_with_the_customer_kms_key(offline_ec2, provisioned):
    kms = offline_ec2.client("kms", REGION)
    key = kms.create_key(Description="coiled test key")["KeyMetadata"]
    kms.create_alias(AliasName="alias/coiled-test-secrets", TargetKeyId=key["KeyId"])
    try:
        spec = _spec("customer-key", {"kms_key_id": "alias/coiled-test-secrets"}, environ={"TOKEN": SECRET})
        provisioned(spec)
        found = _parameters(offline_ec2, spec.name)
        secure = {n: p for n, p in found.items() if p["Type"] == "SecureString"}
        assert f"/coiled/{spec.name}/spec" in secure and any("/secrets/" in n for n in secure)
        assert {p.get("KeyId") for p in secure.values()} == {key["Arn"]}
        for roles in _roles_by_node_role(offline_ec2, spec.name).values():
            documents = role_policies(offline_ec2, roles.pop())
            decrypt = [s for d in documents for s in d["Statement"] if "kms:Decrypt" in s["Action"]]
            assert [s["Resource"] for s in decrypt] == [[key["Arn"]]]
            assert decrypt[0]["Condition"]["StringEquals"]["kms:ViaService"] == f"ssm.{REGION}.amazonaws.com"
    finally:
        kms.delete_alias(AliasName="alias/coiled-test-secrets")
        kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)


def test_an_unknown_kms_key_fails_before_anything_exists(offline_ec2, backend):
    spec = _spec("no-such-key", {"kms_key_id": "alias/coiled-does-not-exist"}, security=False)
    with pytest.raises(ClusterSpecError, match="kms_key_id .*no such KMS key"):
        backend.provision(spec, backend.validate_options(spec.backend_options))
    assert instances(offline_ec2, spec.name, REGION) == [] and _parameters(offline_ec2, spec.name) == {}


def test_environ_is_not_in_user_data_and_the_spec_is_a_secure_string(offline_ec2, provisioned, backend):
    spec = _spec("environ-at-rest", environ={"TOKEN": SECRET})
    record = provisioned(spec)
    ec2 = offline_ec2.client("ec2", REGION)
    nodes = instances(offline_ec2, spec.name, REGION)
    assert len(nodes) == 2
    for instance in nodes:
        data = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
        script = base64.b64decode(data["UserData"]["Value"]).decode()
        assert SECRET not in script and "TOKEN" not in script
        assert node_config(script).environ == {}  # the node reads it from SSM
    found = _parameters(offline_ec2, spec.name)
    assert found[f"/coiled/{spec.name}/spec"]["Type"] == "SecureString"
    assert all(p["Type"] == "SecureString" for n, p in found.items() if "/secrets/" in n)
    # describe still reads the spec (decrypted), environ included.
    described = backend.describe(spec.name, backend.validate_options(spec.backend_options))
    assert described.spec["environ"] == {"TOKEN": SECRET}
    assert record.spec["environ"] == {"TOKEN": SECRET}


def test_gc_deletes_the_secrets_of_a_cluster_with_nothing_else_left(offline_ec2, provisioned, backend):
    """A cluster whose instances and security group are gone still had its secrets in SSM."""
    spec = _spec("only-secrets-left", environ={"TOKEN": SECRET})
    provisioned(spec)
    ec2 = offline_ec2.client("ec2", REGION)
    ids = [i["InstanceId"] for i in instances(offline_ec2, spec.name, REGION)]
    ec2.terminate_instances(InstanceIds=ids)
    for group in ec2.describe_security_groups(Filters=[{"Name": "tag:coiled:cluster", "Values": [spec.name]}])["SecurityGroups"]:
        group_id = group["GroupId"]
        wait_until(lambda group_id=group_id: _deleted(ec2, group_id), 60, interval=1, message="the group to be deletable")
    assert _secret_parameters(offline_ec2, spec.name)
    backend.gc(backend.validate_options(spec.backend_options))
    assert _parameters(offline_ec2, spec.name) == {}


def _deleted(ec2, group_id):
    from botocore.exceptions import ClientError

    try:
        ec2.delete_security_group(GroupId=group_id)
        return True
    except ClientError as e:
        if e.response["Error"]["Code"] == "DependencyViolation":
            return False
        raise


def test_nodes_get_environ_and_a_cluster_that_ends_by_itself_takes_its_secrets(offline_ec2, backend):
    """environ reaches scheduler and workers through SSM (DASK_* variables into dask's config),
    and the scheduler deletes every secret parameter of its cluster when it ends on idle."""
    from distributed import Client

    import coiled

    environ = {"COILED_TEST_TOKEN": SECRET, "DASK_COILED_TEST__FLAG": "on"}
    cluster = coiled.Cluster(
        name=f"ends-by-itself-{os.getpid()}",
        backend="aws",
        backend_options=OPTIONS,
        n_workers=1,
        worker_cpu=1,
        worker_memory="2 GiB",
        environ=environ,
        security=True,
        shutdown_on_close=False,
        # Idle from its start: long enough for the checks, shortened below to end it.
        scheduler_options={"idle_timeout": "1h"},
        wait_for_workers=True,
    )
    name = cluster.name
    options = backend.validate_options(OPTIONS)
    try:
        assert _secret_parameters(offline_ec2, name)

        def seen():
            import dask

            return os.environ.get("COILED_TEST_TOKEN"), dask.config.get("coiled-test.flag", None)

        def time_out_when_idle(dask_scheduler):
            # It has been idle all along: its next idle check (every 250 ms) closes it.
            dask_scheduler.idle_timeout = 0.1

        with Client(cluster) as client:
            assert list(client.run(seen).values()) == [(SECRET, "on")]
            assert client.run_on_scheduler(seen) == (SECRET, "on")
            client.run_on_scheduler(time_out_when_idle)
        cluster.close()

        def ended():
            record = backend.describe(name, options)
            return record is None or not record.state.is_live

        wait_until(ended, 120, interval=0.5, message="the cluster to end on idle")
        assert _secret_parameters(offline_ec2, name) == []
    finally:
        record = backend.describe(name, options)
        if record is not None:
            backend.teardown(record, options)
        backend.gc(options)
        # The core keeps the client's TLS material until its own teardown or gc.
        delete_tls(Store(), name, "aws")



def test_large_values_use_the_advanced_tier_and_too_large_ones_fail_first(offline_ec2, backend):
    from coiled_aws import parameters
    from coiled_aws.options import AWSOptions
    from coiled_aws.session import AWS

    aws = AWS(AWSOptions(region=REGION))
    name = "/coiled/large-values/secrets/worker/environ"
    parameters.put_secure(aws, name, "x" * 5000, None)
    try:
        assert _parameters(offline_ec2, "large-values")[name]["Tier"] == "Advanced"
    finally:
        parameters.delete_names(aws, [name])
    spec = _spec("too-large", environ={"BIG": "x" * 9000}, security=False)
    with pytest.raises(ClusterSpecError, match="environ is 9.* bytes, more than the 8192 bytes"):
        backend.provision(spec, backend.validate_options(spec.backend_options))
    assert instances(offline_ec2, spec.name, REGION) == [] and _parameters(offline_ec2, spec.name) == {}
