"""IAM on the offline Compute Engine: a machine holds its instance's service account's token, never
the client's, and a node of one cluster reaches only what its account was granted, as Google
decides it (instance, secret and bucket policies, custom and predefined roles, conditions)."""

from __future__ import annotations

import urllib.parse

import pytest
import requests
from coiled_gcp import identity, offline_iam, plugin, storage
from coiled_gcp.options import GCPOptions
from coiled_gcp.session import GCP

from coiled_core.spec import resolve_cluster_spec
from coiled_core.testing import wait_until

ENV_KEY = "0123456789abcdef"


def _provision(name):
    from coiled_core.security import ClusterTLS

    spec = resolve_cluster_spec({"name": name, "n_workers": 1, "worker_cpu": 1, "worker_memory": "2 GiB", "security": True})
    options = GCPOptions(allow_ingress_from="127.0.0.1/32")
    return spec, options, plugin.provision(spec, options, ClusterTLS.generate(name))


class _Node:
    """Requests as a node of one cluster makes them: with its instances' service account's token."""

    def __init__(self, fake, name, record):
        self.fake, self.label, self.record = fake, plugin.cluster_label(name), record
        self.instances = [i for i in fake.state.instances.values() if i["labels"].get(plugin.LABEL_CLUSTER) == self.label]
        email = self.instances[0]["serviceAccounts"][0]["email"]
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {fake.account_token(email)}"
        self.email, self.build_id = email, record.backend_ids["build_id"]

    def worker(self):
        return next(i for i in self.instances if "-w-" in i["name"])

    def read_secret(self, label):
        return self.session.get(f"{self.fake.endpoint}/v1/projects/{self.fake.project}/secrets/{storage.secret_id(label, 'worker')}/versions/latest:access")

    def delete_instance(self, instance):
        zone = instance["zone"].rsplit("/", 1)[-1]
        return self.session.delete(f"{self.fake.endpoint}/compute/v1/projects/{self.fake.project}/zones/{zone}/instances/{instance['name']}")

    def write(self, bucket, key, data=b"x"):
        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        return self.session.post(f"{self.fake.endpoint}/upload/storage/v1/b/{bucket}/o?{query}", data=data, headers={"Content-Type": "text/plain"})

    def read(self, bucket, key):
        return self.session.get(f"{self.fake.endpoint}/storage/v1/b/{bucket}/o/{urllib.parse.quote(key, safe='')}?alt=media")


def _denied(reply, permission, *words):
    assert reply.status_code == 403, reply.text
    error = reply.json()["error"]
    assert error["code"] == 403 and error["status"] == "PERMISSION_DENIED"
    assert error["errors"][0]["reason"] == "forbidden"
    assert permission in error["message"] and all(w in error["message"] for w in words), error["message"]


@pytest.fixture
def two_clusters(api_only):
    first, second = _provision("iam-one"), _provision("iam-two")
    denied = len(api_only.denied)
    try:
        yield _Node(api_only, "iam-one", first[2]), _Node(api_only, "iam-two", second[2]), storage.bucket_name(GCP(first[1]))
    finally:
        del api_only.denied[denied:]  # the refusals these tests asked for
        for _spec, options, record in (first, second):
            plugin.teardown(record, options)


def test_a_node_reads_its_own_secret_and_deletes_its_own_instance_but_not_another_clusters(two_clusters, api_only):
    one, two, _bucket = two_clusters
    assert one.email != two.email and one.email == identity.account_email(GCP(GCPOptions()), one.label)
    assert one.read_secret(one.label).status_code == 200
    reply = one.read_secret(two.label)
    _denied(reply, "secretmanager.versions.access", f"secrets/{storage.secret_id(two.label, 'worker')}", "(or it may not exist)")
    # The secret's own IAM is the node's: reading its policy or adding a version is not.
    url = f"{api_only.endpoint}/v1/projects/{api_only.project}/secrets/{storage.secret_id(one.label, 'worker')}"
    _denied(one.session.post(f"{url}:addVersion", json={"payload": {"data": "eA=="}}), "secretmanager.versions.add")
    _denied(one.session.post(f"{url}:setIamPolicy", json={"policy": {"bindings": []}}), "secretmanager.secrets.setIamPolicy")

    theirs = two.worker()
    _denied(one.delete_instance(theirs), "compute.instances.delete", f"instances/{theirs['name']}")
    assert (theirs["zone"].rsplit("/", 1)[-1], theirs["name"]) in api_only.state.instances
    ours = one.worker()
    assert one.delete_instance(ours).status_code == 200
    assert (ours["zone"].rsplit("/", 1)[-1], ours["name"]) not in api_only.state.instances
    # Nothing on the project: no listing, no new instance, no firewall rule.
    compute = f"{api_only.endpoint}/compute/v1/projects/{api_only.project}"
    _denied(one.session.get(f"{compute}/aggregated/instances"), "compute.instances.list", f"projects/{api_only.project}")
    _denied(one.session.get(f"{compute}/global/firewalls"), "compute.firewalls.list")
    _denied(one.session.get(f"{api_only.endpoint}/v1/projects/{api_only.project}/secrets"), "secretmanager.secrets.list")
    # The client's token may do everything.
    client = requests.get(f"{compute}/aggregated/instances", headers={"Authorization": f"Bearer {api_only.token}"}, timeout=30)
    assert client.status_code == 200


def test_a_node_writes_only_its_own_logs_and_its_own_builds_packs(two_clusters, api_only):
    one, two, bucket = two_clusters
    logs = f"logs/{one.label}/coiled-node.log"
    assert one.write(bucket, logs).status_code == 200
    assert one.write(bucket, logs, b"again").status_code == 200  # writing over it: create and delete
    assert one.read(bucket, logs).content == b"again"
    own_pack = f"envs/{ENV_KEY}/builds/{one.build_id}/x86_64.tar.zst"
    assert one.write(bucket, own_pack).status_code == 200
    # It reads the agent and every pack, whoever built it.
    agent = next(name for (b, name) in api_only.state.objects if b == bucket and name.startswith("agent/"))
    assert one.read(bucket, agent).status_code == 200
    assert two.write(bucket, f"envs/{ENV_KEY}/builds/{two.build_id}/x86_64.tar.zst", b"theirs").status_code == 200
    assert one.read(bucket, f"envs/{ENV_KEY}/builds/{two.build_id}/x86_64.tar.zst").content == b"theirs"

    refused = [
        f"pins/{ENV_KEY}.json",
        agent,
        "agent/planted.zip",
        f"envs/{ENV_KEY}/builds/{two.build_id}/x86_64.tar.zst",
        f"envs/{ENV_KEY}/x86_64.tar.zst",
        f"logs/{two.label}/coiled-node.log",
        f"claims/{two.label}.json",
    ]
    for key in refused:
        before = api_only.state.objects.get((bucket, key), {}).get("_data")
        _denied(one.write(bucket, key, b"planted"), "storage.objects.create", one.email, "Google Cloud Storage object")
        assert api_only.state.objects.get((bucket, key), {}).get("_data") == before
    # Reads beyond the agent and the packs, deletes and listings are refused too.
    _denied(one.read(bucket, f"logs/{two.label}/coiled-node.log"), "storage.objects.get")
    theirs = f"envs/{ENV_KEY}/builds/{two.build_id}/x86_64.tar.zst"
    _denied(one.session.delete(f"{api_only.endpoint}/storage/v1/b/{bucket}/o/{urllib.parse.quote(theirs, safe='')}"), "storage.objects.delete")
    _denied(one.session.get(f"{api_only.endpoint}/storage/v1/b/{bucket}/o?prefix=envs/"), "storage.objects.list", "Google Cloud Storage bucket")
    _denied(one.session.get(f"{api_only.endpoint}/storage/v1/b/{bucket}/iam"), "storage.buckets.getIamPolicy")


def test_a_token_nobody_issued_is_refused(api_only):
    reply = requests.get(f"{api_only.endpoint}/v1/projects/{api_only.project}", headers={"Authorization": "Bearer made-up"}, timeout=30)
    assert reply.status_code == 401


def test_an_account_of_the_users_own_has_what_the_project_grants_it(api_only):
    email = "my-nodes@offline-project.iam.gserviceaccount.com"
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_only.account_token(email)}"
    url = f"{api_only.endpoint}/compute/v1/projects/{api_only.project}/aggregated/instances"
    _denied(session.get(url), "compute.instances.list")
    api_only.grant_project(f"serviceAccount:{email}", "roles/owner")
    try:
        assert session.get(url).status_code == 200
    finally:
        api_only.state.policies.pop(f"projects/{api_only.project}")
        api_only.denied.clear()


def test_conditions_on_resource_names():
    name = "projects/_/buckets/b/objects/envs/k1/builds/abc/x.tar"
    assert offline_iam.condition_holds('resource.name.startsWith("projects/_/buckets/b/objects/envs/")', name)
    assert not offline_iam.condition_holds('resource.name.startsWith("projects/_/buckets/b/objects/agent/")', name)
    assert offline_iam.condition_holds('resource.name.extract("projects/_/buckets/b/objects/envs/{key}/builds/abc/") != ""', name)
    assert not offline_iam.condition_holds('resource.name.extract("projects/_/buckets/b/objects/envs/{key}/builds/abd/") != ""', name)
    assert offline_iam.condition_holds('resource.name.startsWith("x/") || resource.name.startsWith("projects/_/buckets/b/")', name)
    with pytest.raises(offline_iam.UnknownCondition):
        offline_iam.condition_holds('resource.type == "storage.googleapis.com/Object"', name)


def test_a_machine_holds_its_instances_account_token_never_the_clients(offline_gcp):
    from google.cloud import compute_v1

    gcp = GCP(GCPOptions())
    email = "coiled-node-tokentest@offline-project.iam.gserviceaccount.com"
    script = 'umask 077; printf %s "${COILED_GCP_TOKEN:-none}" > token.txt; exec sleep 300'
    for name, accounts in (("with-account", [{"email": email, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]), ("no-account", [])):
        body = {
            "name": name,
            "machine_type": "zones/us-east1-b/machineTypes/e2-standard-2",
            "metadata": {"items": [{"key": "startup-script", "value": script}]},
            "network_interfaces": [{"network": "global/networks/default"}],
            "service_accounts": accounts,
        }
        gcp.wait(gcp.instances.insert_unary(project=gcp.project, zone="us-east1-b", instance_resource=compute_v1.Instance(body)))
    try:
        tokens = {}
        for name in ("with-account", "no-account"):
            path = offline_gcp.workdir / name / "token.txt"
            wait_until(lambda: path.exists() and path.read_text(), 30, message=f"{name} to boot")
            tokens[name] = path.read_text()
        assert tokens["with-account"] == offline_gcp.account_token(email) != offline_gcp.token
        assert tokens["no-account"] == "none"
    finally:
        for name in ("with-account", "no-account"):
            gcp.wait(gcp.instances.delete_unary(project=gcp.project, zone="us-east1-b", instance=name))
