"""The GCP backend's security rules on the offline Compute Engine: a bucket of another project is
never used, nodes run as a least-privilege service account that reaches only its own cluster, gc
deletes only what it can prove is ours, bucket logs expire and tokens stay out of arguments."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from coiled_gcp import plugin, storage
from coiled_gcp.options import GCPOptions
from coiled_gcp.session import GCP

from coiled_core.errors import ProvisionError
from coiled_core.spec import resolve_cluster_spec

BASE = {"allow_ingress_from": "127.0.0.1/32"}


def _spec(name, **keywords):
    return resolve_cluster_spec({"name": name, "n_workers": 1, "worker_cpu": 1, "worker_memory": "2 GiB", "security": False, **keywords})


# -- bucket sniping ------------------------------------------------------------------------------
def test_the_project_number_comes_from_resource_manager_and_owns_new_buckets(api_only):
    gcp = GCP(GCPOptions(bucket="coiled-test-own-bucket"))
    assert storage.project_number(gcp) == api_only.project_number
    assert storage.ensure_bucket(gcp) == "coiled-test-own-bucket"
    assert api_only.state.buckets["coiled-test-own-bucket"]["projectNumber"] == api_only.project_number


@pytest.mark.parametrize("readable", [True, False])
def test_a_bucket_of_another_project_is_refused_before_anything_is_read_or_written(api_only, readable):
    name = f"coiled-sniped-{'readable' if readable else 'hidden'}"
    api_only.add_bucket(name, project_number="999999999999", readable=readable)
    options = GCPOptions(**BASE, bucket=name)
    spec = _spec(f"sniped-{readable}")
    with pytest.raises(ProvisionError) as info:
        plugin.provision(spec, options, None)
    message = str(info.value)
    assert repr(name) in message and "another project" in message and "backend_options={'bucket'" in message
    with pytest.raises(storage.ForeignBucketError):
        plugin.claim_name(spec.name, options)
    with pytest.raises(storage.ForeignBucketError):
        plugin.build_environment(None, options)
    # Nothing of ours went into it, and no cluster was started.
    assert [k for (b, k) in api_only.state.objects if b == name] == []
    assert [i for i in api_only.state.instances.values() if i["labels"].get(plugin.LABEL_CLUSTER) == plugin.cluster_label(spec.name)] == []


# -- node identity -------------------------------------------------------------------------------
def _provision(name, **options):
    from coiled_core.security import ClusterTLS

    spec = _spec(name, security=True)
    opts = GCPOptions(**BASE, **options)
    return spec, opts, plugin.provision(spec, opts, ClusterTLS.generate(name))


def _cluster_instances(fake, name):
    label = plugin.cluster_label(name)
    return [i for i in fake.state.instances.values() if i["labels"].get(plugin.LABEL_CLUSTER) == label]


def _members(policy):
    return {m for b in policy.get("bindings", []) for m in b.get("members", [])}


def test_nodes_run_as_their_clusters_own_account_that_reaches_only_its_cluster(api_only):
    from coiled_gcp import identity

    first = _provision("identity-one")
    second = _provision("identity-two")
    try:
        gcp = GCP(first[1])
        role = identity.node_role(gcp)
        assert sorted(api_only.state.roles[role]["includedPermissions"]) == sorted(identity.NODE_PERMISSIONS)
        for spec, _options, _record in (first, second):
            label = plugin.cluster_label(spec.name)
            email = identity.account_email(gcp, label)
            member = f"serviceAccount:{email}"
            assert spec.name in api_only.state.service_accounts[email]["description"]
            instances = _cluster_instances(api_only, spec.name)
            assert len(instances) == 2
            for instance in instances:
                # Never the Compute Engine default account.
                assert [a["email"] for a in instance["serviceAccounts"]] == [email]
                zone = instance["zone"].rsplit("/", 1)[-1]
                policy = api_only.state.policies[f"instances/{zone}/{instance['name']}"]
                assert policy["bindings"] == [{"role": role, "members": [member]}]
            for secret in plugin._secret_ids(label):
                assert api_only.state.policies[f"secrets/{secret}"]["bindings"] == [{"role": role, "members": [member]}]
            assert f"secrets/{storage.secret_id(label, 'spec')}" not in api_only.state.policies  # the spec is the client's
            bucket = api_only.state.policies[f"buckets/{storage.bucket_name(gcp)}"]
            ours = [b for b in bucket["bindings"] if member in b["members"]]
            build_id = _record.backend_ids["build_id"]
            assert build_id
            assert ours == identity.bucket_bindings(storage.bucket_name(gcp), label, email, build_id)
            assert all("condition" in b for b in ours)
            writes = ours[1]["condition"]["expression"]
            assert f"logs/{label}/" in writes and "labels" not in json.dumps(ours)
            # Packs only of its own build: never another cluster's build, a pin or the agent.
            assert f'objects/envs/{{key}}/builds/{build_id}/")' in writes
            assert "objects/envs/\")" not in writes and "pins/" not in writes and "agent/" not in writes
        # Neither cluster's account is on any resource of the other's.
        one = f"serviceAccount:{identity.account_email(gcp, plugin.cluster_label('identity-one'))}"
        for key, policy in api_only.state.policies.items():
            if plugin.cluster_label("identity-two") in key and not key.startswith("buckets/"):
                assert one not in _members(policy)
    finally:
        for _spec_, options, record in (first, second):
            plugin.teardown(record, options)
    for spec, _options, _record in (first, second):
        label = plugin.cluster_label(spec.name)
        email = identity.account_email(gcp, label)
        assert email not in api_only.state.service_accounts
        assert f"serviceAccount:{email}" not in _members(api_only.state.policies[f"buckets/{storage.bucket_name(gcp)}"])
        assert not [k for k in api_only.state.policies if label in k]


def test_a_named_service_account_is_used_as_given_and_the_default_one_is_refused(api_only):
    from pydantic import ValidationError

    for default in ("default", "123456789012-compute@developer.gserviceaccount.com"):
        with pytest.raises(ValidationError, match="Compute Engine default service account"):
            GCPOptions(service_account=default)
    email = "my-nodes@offline-project.iam.gserviceaccount.com"
    spec, options, record = _provision("identity-named", service_account=email)
    try:
        for instance in _cluster_instances(api_only, spec.name):
            assert [a["email"] for a in instance["serviceAccounts"]] == [email]
        assert not [e for e in api_only.state.service_accounts if "identity-named" in api_only.state.service_accounts[e].get("description", "")]
    finally:
        plugin.teardown(record, options)


def test_the_readme_claims_no_iam_condition_on_labels():
    from pathlib import Path

    readme = (Path(plugin.__file__).parents[1] / "README.md").read_text()
    assert "condition on the `coiled-cluster` label" not in readme
    assert "IAM conditions cannot test labels" in readme


# -- gc proves a firewall rule is ours -------------------------------------------------------------
def _rule(gcp, name, **fields):
    from google.cloud import compute_v1

    body = {"name": name, "network": "global/networks/default", "direction": "INGRESS", "source_ranges": ["10.0.0.0/8"],
            "allowed": [{"I_p_protocol": "tcp", "ports": ["22"]}], **fields}
    gcp.wait(gcp.firewalls.insert_unary(project=gcp.project, firewall_resource=compute_v1.Firewall(body)))


def test_gc_deletes_a_firewall_rule_only_with_proof_that_it_is_ours(api_only):
    options = GCPOptions(**BASE)
    gcp = GCP(options)
    # Someone's own rules that merely look like ours: by name, or by name and tag and a copied
    # description, but with no cluster of ours behind them (no claim, no labelled resource).
    _rule(gcp, "coiled-lookalike-client", description="ssh for the lookalike team")
    _rule(gcp, "coiled-copycat-client", target_tags=["coiled-copycat"], description="coiled cluster copycat [coiled-cluster=copycat]")
    # A cluster of ours that ended on its own: its instances and secrets are gone, its rules,
    # address and claim are left.
    spec, opts, record = _provision("ended-alone")
    label = plugin.cluster_label(spec.name)
    for key in [k for k, i in api_only.state.instances.items() if i["labels"].get(plugin.LABEL_CLUSTER) == label]:
        del api_only.state.instances[key]
    for secret in [s for s in api_only.state.secrets if f"coiled-{label}-" in s]:
        del api_only.state.secrets[secret]
    try:
        removed = plugin.gc(options)
        assert f"deleted firewall rule coiled-{label}-client" in removed and f"deleted firewall rule coiled-{label}-internal" in removed
        assert "coiled-lookalike-client" in api_only.state.firewalls and "coiled-copycat-client" in api_only.state.firewalls
        # Teardown of a cluster of that name spares the lookalike too.
        plugin._delete_label(gcp, "lookalike", "lookalike")
        assert "coiled-lookalike-client" in api_only.state.firewalls
    finally:
        for name in ("coiled-lookalike-client", "coiled-copycat-client"):
            gcp.wait(gcp.firewalls.delete_unary(project=gcp.project, firewall=name))
        plugin.teardown(record, opts)


# -- low: logs expire, tokens stay out of process arguments ---------------------------------------
def test_the_buckets_logs_expire_new_bucket_or_old(api_only):
    fresh = GCP(GCPOptions(bucket="coiled-test-logs-expire"))
    storage.ensure_bucket(fresh)
    assert storage.LOGS_RULE in api_only.state.buckets["coiled-test-logs-expire"]["lifecycle"]["rule"]
    # A bucket of ours made before, with a rule of the owner's own: the logs rule is added.
    own_rule = {"action": {"type": "SetStorageClass", "storageClass": "NEARLINE"}, "condition": {"age": 90}}
    api_only.add_bucket("coiled-test-logs-older")
    api_only.state.buckets["coiled-test-logs-older"]["lifecycle"] = {"rule": [own_rule]}
    storage.ensure_bucket(GCP(GCPOptions(bucket="coiled-test-logs-older")))
    assert api_only.state.buckets["coiled-test-logs-older"]["lifecycle"]["rule"] == [own_rule, storage.LOGS_RULE]
    assert storage.LOGS_RULE["condition"]["matchesPrefix"] == ["logs/"]


_CURL = """#!/bin/sh
# curl on a GCE node: the metadata server's answers; other calls recorded with their input.
case "$*" in
  *service-accounts/default/token*) echo '{"access_token":"SECRET-TOKEN-123","expires_in":3599}' ;;
  *instance/zone*) echo projects/1/zones/us-east1-b ;;
  *project/project-id*) echo offline-project ;;
  *) printf '%s\\n' "$*" >> "$CALLS"; cat >> "$CALLS.stdin" ;;
esac
"""


def test_the_self_delete_passes_the_token_on_stdin_never_in_arguments(tmp_path):
    import os
    import subprocess

    from coiled_gcp import bootstrap

    for name, text in (("curl", _CURL), ("shutdown", "#!/bin/sh\nexit 0\n")):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"), "COILED_INSTANCE_ID": "node-1"}
    subprocess.run(["bash", "-c", bootstrap.POWER_OFF_COMMAND], env=env, check=True, timeout=60)
    arguments = (tmp_path / "calls").read_text()
    assert "instances/node-1" in arguments and "-X DELETE" in arguments
    assert "SECRET-TOKEN-123" not in arguments
    assert (tmp_path / "calls.stdin").read_text().strip() == "Authorization: Bearer SECRET-TOKEN-123"


# -- the client's documented role is exactly what the client calls ---------------------------------
_INSERT = {
    "compute.instances.create", "compute.instances.setMetadata", "compute.instances.setLabels", "compute.instances.setTags",
    "compute.instances.setServiceAccount", "compute.disks.create", "compute.disks.setLabels", "compute.images.useReadOnly",
    "compute.subnetworks.use", "compute.subnetworks.useExternalIp", "iam.serviceAccounts.actAs",
}
#: (method, path pattern) of the stand-in's call counts -> the permissions the call needs.
_PERMISSIONS = [
    ("POST", r"/compute/v1/projects/[^/]+/zones/[^/]+/instances$", _INSERT),
    ("POST", r"/instances/bulkInsert$", _INSERT),
    ("POST", r"/instances/[^/]+/setIamPolicy$", {"compute.instances.setIamPolicy"}),
    ("GET", r"/compute/v1/projects/[^/]+/aggregated/instances$", {"compute.instances.list"}),
    ("GET", r"/zones/[^/]+/instances$", {"compute.instances.list"}),
    ("GET", r"/zones/[^/]+/instances/[^/]+$", {"compute.instances.get"}),
    ("DELETE", r"/zones/[^/]+/instances/[^/]+$", {"compute.instances.delete"}),
    ("POST", r"/global/firewalls$", {"compute.firewalls.create", "compute.networks.updatePolicy"}),
    ("GET", r"/global/firewalls$", {"compute.firewalls.list"}),
    ("GET", r"/global/firewalls/[^/]+$", {"compute.firewalls.get"}),
    ("DELETE", r"/global/firewalls/[^/]+$", {"compute.firewalls.delete"}),
    ("POST", r"/regions/[^/]+/addresses$", {"compute.addresses.createInternal", "compute.addresses.setLabels", "compute.subnetworks.use"}),
    ("GET", r"/regions/[^/]+/addresses$", {"compute.addresses.list"}),
    ("GET", r"/regions/[^/]+/addresses/[^/]+$", {"compute.addresses.get"}),
    ("DELETE", r"/regions/[^/]+/addresses/[^/]+$", {"compute.addresses.deleteInternal"}),
    ("GET", r"/global/networks/[^/]+$", {"compute.networks.get"}),
    ("GET", r"/regions/[^/]+/subnetworks/[^/]+$", {"compute.subnetworks.get"}),
    ("GET", r"/machineTypes(/[^/]+)?$", {"compute.machineTypes.list", "compute.machineTypes.get"}),
    ("GET", r"/compute/v1/projects/[^/]+/regions/[^/]+$", {"compute.regions.get"}),
    ("(GET|POST)", r"/zones/[^/]+/operations/", {"compute.zoneOperations.get"}),
    ("(GET|POST)", r"/regions/[^/]+/operations/", {"compute.regionOperations.get"}),
    ("(GET|POST)", r"/global/operations/", {"compute.globalOperations.get"}),
    ("POST", r"^/storage/v1/b$", {"storage.buckets.create"}),
    ("GET", r"^/storage/v1/b/[^/]+$", {"storage.buckets.get"}),
    ("PATCH", r"^/storage/v1/b/[^/]+$", {"storage.buckets.update"}),
    ("GET", r"^/storage/v1/b/[^/]+/iam$", {"storage.buckets.getIamPolicy"}),
    ("PUT", r"^/storage/v1/b/[^/]+/iam$", {"storage.buckets.setIamPolicy"}),
    ("GET", r"^/storage/v1/b/[^/]+/o$", {"storage.objects.list"}),
    ("GET", r"^/storage/v1/b/[^/]+/o/", {"storage.objects.get"}),
    ("POST", r"^/upload/storage/v1/b/[^/]+/o$", {"storage.objects.create", "storage.objects.delete"}),  # overwrite = delete
    ("DELETE", r"^/storage/v1/b/[^/]+/o/", {"storage.objects.delete"}),
    ("POST", r"^/v1/projects/[^/]+/secrets$", {"secretmanager.secrets.create"}),
    ("GET", r"^/v1/projects/[^/]+/secrets$", {"secretmanager.secrets.list"}),
    ("GET", r"^/v1/projects/[^/]+/secrets/[^/:]+$", {"secretmanager.secrets.get"}),
    ("DELETE", r"^/v1/projects/[^/]+/secrets/[^/:]+$", {"secretmanager.secrets.delete"}),
    ("POST", r"^/v1/projects/[^/]+/secrets/[^/:]+:addVersion$", {"secretmanager.versions.add"}),
    ("GET", r"^/v1/projects/[^/]+/secrets/[^/:]+/versions/latest:access$", {"secretmanager.versions.access"}),
    ("POST", r"^/v1/projects/[^/]+/secrets/[^/:]+:setIamPolicy$", {"secretmanager.secrets.setIamPolicy"}),
    ("POST", r"^/v1/projects/[^/]+/serviceAccounts$", {"iam.serviceAccounts.create"}),
    ("GET", r"^/v1/projects/[^/]+/serviceAccounts/[^/]+$", {"iam.serviceAccounts.get"}),
    ("DELETE", r"^/v1/projects/[^/]+/serviceAccounts/[^/]+$", {"iam.serviceAccounts.delete"}),
    ("POST", r"^/v1/projects/[^/]+/roles$", {"iam.roles.create"}),
    ("GET", r"^/v1/projects/[^/]+$", {"resourcemanager.projects.get"}),
]


def _needed(calls):
    needed, unknown = set(), []
    for call in calls:
        method, path = call.split(" ", 1)
        found = [perms for m, pattern, perms in _PERMISSIONS if re.fullmatch(m, method) and re.search(pattern, path)]
        if not found:
            unknown.append(call)
        needed |= found[0] if found else set()
    return needed, unknown


def test_the_documented_client_role_is_exactly_what_the_client_calls(api_only):
    import yaml

    role = yaml.safe_load((Path(plugin.__file__).parent / "client-role.yaml").read_text())
    from coiled_gcp import machine_types

    machine_types._CACHE.clear()  # read the catalogue again, as a new process would
    before = dict(api_only.calls)
    options = GCPOptions(**BASE, bucket="coiled-test-client-role")
    spec, opts, record = _provision("client-role", bucket="coiled-test-client-role")
    record = plugin.scale(record, opts, 2, [], None)
    record = plugin.scale(record, opts, 1, [record.workers[0].name], None)
    plugin.describe(spec.name, opts)
    plugin.list_clusters(opts)
    plugin.logs(record, opts, 10)
    assert plugin.claim_name(spec.name, opts) is False  # held by the live cluster
    plugin.teardown(record, opts)
    plugin.gc(options)
    calls = [k for k, n in api_only.calls.items() if n > before.get(k, 0)]
    needed, unknown = _needed(calls)
    assert unknown == [], "calls the role table does not know"
    granted = set(role["includedPermissions"])
    assert needed <= granted, sorted(needed - granted)
    # Nothing more than the calls need, nor any predefined admin role. Offline every operation
    # is DONE at once, so the waits on pending ones are not seen; the lifecycle update is for a
    # bucket made before logs expired; a subnetwork is looked up when the user names one (this
    # cluster is on the default network).
    implied = {"compute.zoneOperations.get", "compute.regionOperations.get", "compute.globalOperations.get", "storage.buckets.update",
               "compute.subnetworks.get"}
    assert granted - needed <= implied, sorted(granted - needed - implied)
    assert not any(p.endswith(".*") or p.startswith("roles/") for p in granted)


def test_a_node_asks_again_while_iam_lets_its_new_account_in(api_only):
    from coiled_gcp.node import GCPNode

    gcp = GCP(GCPOptions())
    storage.put_secret(gcp, "coiled-propagation-worker", storage.json_secret({"tls": {}, "environ": {"A": "1"}}), {})
    try:
        # A new account's grant not yet everywhere: the first read is refused.
        api_only.fail("GET", r"/secrets/coiled-propagation-worker/versions/latest:access$", 403, "forbidden")
        node = GCPNode({"project": gcp.project, "secret": "coiled-propagation-worker"}, None)
        assert node.load_secrets().environ == {"A": "1"}
    finally:
        storage.delete_secret(gcp, "coiled-propagation-worker")


# -- offline switches ----------------------------------------------------------------------------
def test_the_endpoint_switch_is_refused_where_no_stand_in_runs(monkeypatch):
    """``COILED_GCP_ENDPOINT`` points the client (and its token) at another server: outside the
    stand-in's tests and demos it is refused before any request is made."""
    from coiled_core.node.addresses import STANDIN_VARIABLE, OfflineSwitchError

    monkeypatch.delenv(STANDIN_VARIABLE, raising=False)
    monkeypatch.setenv("COILED_GCP_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(OfflineSwitchError, match="COILED_GCP_ENDPOINT is a switch of the offline stand-ins"):
        GCP(GCPOptions(project="p"))


def test_the_stand_in_carries_its_own_proof(tmp_path, monkeypatch):
    from coiled_gcp.offline import OfflineGCP

    from coiled_core.node.addresses import STANDIN_VARIABLE, standin_running

    monkeypatch.delenv(STANDIN_VARIABLE, raising=False)
    with OfflineGCP(workdir=tmp_path / "gce", run_scripts=False) as fake:
        proof = fake.environ()[STANDIN_VARIABLE]
        assert standin_running(proof)
        monkeypatch.setenv(STANDIN_VARIABLE, proof)
        monkeypatch.setenv("COILED_GCP_ENDPOINT", fake.endpoint)
        assert GCP(GCPOptions(project=fake.project)).endpoint == fake.endpoint
    assert not standin_running(proof)
