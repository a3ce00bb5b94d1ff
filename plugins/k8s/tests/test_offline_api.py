"""The offline Kubernetes behaves as the API does where the backend relies on it, through the real client."""

import time

import pytest

from coiled_core.testing import wait_until

NS = "default"


@pytest.fixture(scope="module")
def core(offline_k8s):
    from kubernetes import client

    return client.CoreV1Api(offline_k8s.api_client(superuser=True))


@pytest.fixture
def label(request):
    """A label value of this test's own, so tests sharing the session's API do not meet."""
    return f"t{abs(hash(request.node.name)) % 10**8}"


def cleanup(core, label):
    for cm in core.list_namespaced_config_map(NS, label_selector=f"test={label}").items:
        core.delete_namespaced_config_map(cm.metadata.name, NS)


def configmap(name, label, owner=None, **data):
    meta = {"name": name, "labels": {"test": label}}
    if owner is not None:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name,
                                    "uid": owner.metadata.uid}]
    return {"metadata": meta, "data": data}


def status(error):
    import json

    return json.loads(error.body)


def test_errors_are_status_objects(core, label):
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nope", NS)
    assert missing.value.status == 404 and status(missing.value)["reason"] == "NotFound"
    core.create_namespaced_config_map(NS, configmap(f"{label}-a", label))
    try:
        with pytest.raises(ApiException) as taken:
            core.create_namespaced_config_map(NS, configmap(f"{label}-a", label))
        assert taken.value.status == 409 and status(taken.value)["reason"] == "AlreadyExists"
        with pytest.raises(ApiException) as bad:
            core.create_namespaced_config_map(NS, configmap("Not_A_Name", label))
        assert bad.value.status == 422 and status(bad.value)["kind"] == "Status"
        with pytest.raises(ApiException) as big:
            core.create_namespaced_config_map(NS, configmap(f"{label}-big", label, blob="x" * (1024 * 1024 + 1)))
        assert big.value.status == 422 and "1048576" in status(big.value)["message"]
    finally:
        cleanup(core, label)


def test_paging_and_an_expired_continue_token(core, offline_k8s, label):
    from coiled_k8s.client import list_all
    from kubernetes.client.exceptions import ApiException

    for i in range(5):
        core.create_namespaced_config_map(NS, configmap(f"{label}-{i}", label))
    try:
        first = core.list_namespaced_config_map(NS, label_selector=f"test={label}", limit=2)
        assert len(first.items) == 2 and first.metadata.remaining_item_count == 3
        token = first.metadata.var_continue if hasattr(first.metadata, "var_continue") else first.metadata._continue
        offline_k8s.store.expire_continue_tokens()
        with pytest.raises(ApiException) as gone:
            core.list_namespaced_config_map(NS, label_selector=f"test={label}", limit=2, _continue=token)
        assert gone.value.status == 410 and status(gone.value)["reason"] == "Expired"
        # The backend's lister starts again after a 410, and yields nothing twice.
        offline_k8s.inject("list", "configmaps", 410)
        names = [cm.metadata.name for cm in list_all(core.list_namespaced_config_map, NS, f"test={label}", page=2)]
        assert sorted(names) == [f"{label}-{i}" for i in range(5)]
        assert [cm.metadata.name for cm in core.list_namespaced_config_map(
            NS, label_selector=f"test={label},test notin (x),!absent").items] == sorted(names)
    finally:
        cleanup(core, label)


@pytest.mark.parametrize("policy", ["Background", "Foreground", "Orphan"])
def test_owner_references_and_propagation(core, label, policy):
    from kubernetes import client

    owner = core.create_namespaced_config_map(NS, configmap(f"{label}-owner", label))
    core.create_namespaced_config_map(NS, configmap(f"{label}-child", label, owner=owner))
    try:
        core.delete_namespaced_config_map(owner.metadata.name, NS, body=client.V1DeleteOptions(
            propagation_policy=policy, preconditions=client.V1Preconditions(uid=owner.metadata.uid)))

        def names():
            return sorted(c.metadata.name for c in core.list_namespaced_config_map(NS, label_selector=f"test={label}").items)
        wanted = [f"{label}-child"] if policy == "Orphan" else []
        wait_until(lambda: names() == wanted, 10, message=f"garbage collection ({policy})")
        if policy == "Orphan":
            assert not core.read_namespaced_config_map(f"{label}-child", NS).metadata.owner_references
    finally:
        cleanup(core, label)


def test_delete_precondition_protects_a_newer_incarnation(core, label):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    old = core.create_namespaced_config_map(NS, configmap(f"{label}-x", label))
    core.delete_namespaced_config_map(old.metadata.name, NS)
    core.create_namespaced_config_map(NS, configmap(f"{label}-x", label))
    try:
        with pytest.raises(ApiException) as conflict:
            core.delete_namespaced_config_map(f"{label}-x", NS, body=client.V1DeleteOptions(
                preconditions=client.V1Preconditions(uid=old.metadata.uid)))
        assert conflict.value.status == 409
    finally:
        cleanup(core, label)


def test_update_conflict_and_merge_patch(core, label):
    from kubernetes.client.exceptions import ApiException

    cm = core.create_namespaced_config_map(NS, configmap(f"{label}-u", label, a="1"))
    try:
        core.patch_namespaced_config_map(cm.metadata.name, NS, {"data": {"b": "2"}})
        assert core.read_namespaced_config_map(cm.metadata.name, NS).data == {"a": "1", "b": "2"}
        with pytest.raises(ApiException) as stale:
            core.replace_namespaced_config_map(cm.metadata.name, NS, cm)  # an old resourceVersion
        assert stale.value.status == 409 and status(stale.value)["reason"] == "Conflict"
    finally:
        cleanup(core, label)


def _pod(name, label, image, command, **spec):
    return {"metadata": {"name": name, "labels": {"test": label}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": image, "command": command}],
                     **spec}}


def test_pods_run_as_processes_without_coiled_core(core, offline_k8s, label):
    from coiled_k8s.options import default_image

    script = "import os, distributed\ntry:\n import coiled_core\nexcept ImportError: print('no coiled_core')\n" \
             "print(os.environ['POD'], open(os.environ['CFG'] + '/k').read())"
    core.create_namespaced_config_map(NS, configmap(f"{label}-cfg", label, k="mounted"))
    pod = _pod(f"{label}-run", label, default_image(), ["python", "-c", script],
               volumes=[{"name": "cfg", "configMap": {"name": f"{label}-cfg"}}])
    container = pod["spec"]["containers"][0]
    container["env"] = [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "CFG", "value": "/etc/cfg"}]
    container["volumeMounts"] = [{"name": "cfg", "mountPath": "/etc/cfg"}]
    core.create_namespaced_pod(NS, pod)
    try:
        wait_until(lambda: core.read_namespaced_pod(f"{label}-run", NS).status.phase == "Succeeded", 60,
                   message="the pod to succeed")
        read = core.read_namespaced_pod(f"{label}-run", NS)
        assert read.status.pod_ip.startswith("10.") and read.status.container_statuses[0].state.terminated.exit_code == 0
        from coiled_k8s.client import pod_log

        assert pod_log(core, f"{label}-run", NS).splitlines()[-2:] == ["no coiled_core", f"{label}-run mounted"]
    finally:
        core.delete_namespaced_pod(f"{label}-run", NS)
        cleanup(core, label)


def test_image_pull_errors_unschedulable_pods_and_deadlines(core, offline_k8s, label):
    from coiled_k8s.options import default_image

    core.create_namespaced_pod(NS, _pod(f"{label}-img", label, "registry.invalid/nope:1", ["true"]))
    core.create_namespaced_pod(NS, _pod(f"{label}-big", label, default_image(), ["true"],
                                        nodeSelector={"gpu": "a100"}))
    core.create_namespaced_pod(NS, _pod(f"{label}-slow", label, default_image(), ["sleep", "60"],
                                        activeDeadlineSeconds=1))
    try:
        def waiting_reason():
            statuses = core.read_namespaced_pod(f"{label}-img", NS).status.container_statuses or []
            return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason
        wait_until(lambda: waiting_reason() == "ImagePullBackOff", 10, message="ImagePullBackOff")
        big = core.read_namespaced_pod(f"{label}-big", NS)
        wait_until(lambda: (core.read_namespaced_pod(f"{label}-big", NS).status.conditions or [None])[0], 10)
        condition = core.read_namespaced_pod(f"{label}-big", NS).status.conditions[0]
        assert (condition.reason, big.status.phase) == ("Unschedulable", "Pending")
        assert "node affinity/selector" in condition.message
        wait_until(lambda: core.read_namespaced_pod(f"{label}-slow", NS).status.reason == "DeadlineExceeded", 30,
                   message="the deadline")
        assert core.read_namespaced_pod(f"{label}-slow", NS).status.phase == "Failed"
    finally:
        for name in ("img", "big", "slow"):
            core.delete_namespaced_pod(f"{label}-{name}", NS, grace_period_seconds=0)
        wait_until(lambda: not core.list_namespaced_pod(NS, label_selector=f"test={label}").items, 20)


def test_deleted_pods_lose_their_processes(core, offline_k8s, label):
    import psutil
    from coiled_k8s.offline.kubelet import MARK_ENV
    from coiled_k8s.options import default_image

    core.create_namespaced_pod(NS, _pod(f"{label}-sleep", label, default_image(), ["sleep", "300"]))
    wait_until(lambda: core.read_namespaced_pod(f"{label}-sleep", NS).status.phase == "Running", 20)
    uid = core.read_namespaced_pod(f"{label}-sleep", NS).metadata.uid
    marked = [p for p in psutil.process_iter(["environ"]) if (p.info["environ"] or {}).get(MARK_ENV, "").endswith(uid)]
    assert marked
    core.delete_namespaced_pod(f"{label}-sleep", NS)
    psutil.wait_procs(marked, timeout=30)
    assert not any(p.is_running() for p in marked)
    wait_until(lambda: not core.list_namespaced_pod(NS, label_selector=f"test={label}").items, 30)


def test_a_starting_node_leaves_other_runs_processes_alone(tmp_path):
    """Processes another run started (its runner gone or not, this user's or not) are not this
    run's to kill: a new offline Kubernetes kills nothing when it starts, and at its stop only what
    carries its own run's mark."""
    import os
    import subprocess
    import sys

    from coiled_k8s.offline import OfflineKubernetes
    from coiled_k8s.offline.kubelet import MARK_ENV

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**os.environ, MARK_ENV: "1:0.000:dead:pod"})  # a runner that is gone
    try:
        with OfflineKubernetes(tmp_path / "k", run_processes=False):
            time.sleep(0.5)  # the node's loop ran
            assert other.poll() is None
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize(("context", "message"), [
    ({"runAsNonRoot": True}, "container has runAsNonRoot and image will run as root"),
    ({"runAsNonRoot": True, "runAsUser": 0}, "container's runAsUser breaks non-root policy")])
def test_run_as_non_root_without_a_user_fails_on_a_root_image(core, offline_k8s, label, context, message):
    """The Dask image's user is root: runAsNonRoot without a non-root runAsUser cannot start, as on a real node."""
    from coiled_k8s.options import default_image

    body = _pod(f"{label}-nonroot", label, default_image(), ["true"], securityContext=context)
    core.create_namespaced_pod(NS, body)
    try:
        def reason():
            statuses = core.read_namespaced_pod(f"{label}-nonroot", NS).status.container_statuses or []
            return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason
        wait_until(lambda: reason() == "CreateContainerConfigError", 20, message="CreateContainerConfigError")
        waiting = core.read_namespaced_pod(f"{label}-nonroot", NS).status.container_statuses[0].state.waiting
        assert message in waiting.message
    finally:
        core.delete_namespaced_pod(f"{label}-nonroot", NS, grace_period_seconds=0)
        wait_until(lambda: not core.list_namespaced_pod(NS, label_selector=f"test={label}").items, 20)


@pytest.mark.parametrize("blocking", [False, True])
def test_foreground_deletion_waits_only_for_blocking_dependents(core, label, blocking):
    """As the garbage collector does: a foreground deletion of an owner waits for the dependents
    whose reference says blockOwnerDeletion (a pod ending slowly), not for the others."""
    from kubernetes import client
    from coiled_k8s.options import default_image

    owner = core.create_namespaced_config_map(NS, configmap(f"{label}-owner", label))
    pod = _pod(f"{label}-slow", label, default_image(), ["sh", "-c", "trap '' TERM; sleep 300"],
               terminationGracePeriodSeconds=4 if blocking else 60)
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name,
                                           "uid": owner.metadata.uid, "blockOwnerDeletion": blocking}]
    core.create_namespaced_pod(NS, pod)
    try:
        wait_until(lambda: core.read_namespaced_pod(f"{label}-slow", NS).status.phase == "Running", 20)
        core.delete_namespaced_config_map(owner.metadata.name, NS, body=client.V1DeleteOptions(
            propagation_policy="Foreground"))
        wait_until(lambda: core.read_namespaced_pod(f"{label}-slow", NS).metadata.deletion_timestamp, 10,
                   message="the dependent's deletion")

        def owner_there():
            return any(c.metadata.name == f"{label}-owner"
                       for c in core.list_namespaced_config_map(NS, label_selector=f"test={label}").items)
        if blocking:
            assert owner_there()  # held while the pod ends (about 4 s)
            wait_until(lambda: not owner_there(), 30, message="the owner to go after its blocking dependent")
            assert not core.list_namespaced_pod(NS, label_selector=f"test={label}").items
        else:  # gone while its dependent still ends (for a minute)
            wait_until(lambda: not owner_there(), 30, message="the owner to go at once")
            assert core.read_namespaced_pod(f"{label}-slow", NS).metadata.deletion_timestamp
    finally:
        for made in core.list_namespaced_pod(NS, label_selector=f"test={label}").items:
            core.delete_namespaced_pod(made.metadata.name, NS, grace_period_seconds=0)
        wait_until(lambda: not core.list_namespaced_pod(NS, label_selector=f"test={label}").items, 30)
        cleanup(core, label)
