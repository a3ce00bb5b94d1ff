"""What needs no cluster: RBAC in the docs against the code's calls, names, manifests, options, imports."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from coiled_k8s import resources as r
from coiled_k8s.options import K8sOptions

PACKAGE = Path(__file__).parents[1] / "coiled_k8s"
DOCS = Path(__file__).parents[1] / "docs" / "rbac.yaml"
VERBS = {"create": "create", "read": "get", "list": "list", "delete": "delete", "replace": "update",
         "patch": "patch", "delete_collection": "deletecollection"}
RESOURCES = {"pod": "pods", "pod_log": "pods/log", "service": "services", "config_map": "configmaps", "secret": "secrets",
             "service_account": "serviceaccounts", "role": "roles", "role_binding": "rolebindings"}


def calls_in_code():
    """(verb, resource) of every kubernetes client method the client side calls, read from the source."""
    from coiled_k8s.plugin import KINDS

    used = set()
    for path in PACKAGE.glob("*.py"):
        if path.name == "node.py":
            continue  # runs in the scheduler pod, with the pod's own account (see test_scheduler_role)
        for verb, kind in re.findall(r"\.(create|read|list|delete_collection|delete|replace|patch)_namespaced_(\w+?)\b",
                                     path.read_text()):
            if kind.endswith("_with_http_info"):
                kind = kind.removesuffix("_with_http_info")
            if kind == "{kind}" or kind not in RESOURCES:
                continue
            used.add((VERBS[verb], RESOURCES[kind]))
    # _labelled and _remove call list_namespaced_{kind} and delete_namespaced_{kind} for every kind.
    used |= {(verb, RESOURCES[kind]) for kind, _ in KINDS for verb in ("list", "delete")}
    return used


def role_rules(name):
    role = next(d for d in yaml.safe_load_all(DOCS.read_text()) if d and d["metadata"]["name"] == name)
    return {(verb, resource) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}


def test_the_client_role_in_the_docs_is_exactly_what_the_code_calls():
    assert role_rules("coiled-k8s-client") == calls_in_code()


def test_scheduler_role_matches_what_the_node_add_on_and_the_backend_grant():
    source = (PACKAGE / "node.py").read_text()
    assert 'method="DELETE"' in source and "/configmaps/" in source
    assert role_rules("coiled-k8s-scheduler") == {("delete", "configmaps")}
    owner = {"name": "x-cluster", "uid": "u", "namespace": "ns"}
    _, role, _ = r.rbac_manifests("x", K8sOptions(), owner)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["delete"],
                              "resourceNames": ["x-cluster"]}]


@pytest.mark.parametrize("name", ["production", "My_Cluster", "123-numbers", "x" * 120, "-dash-", "ÄÖÜ"])
def test_names_are_dns_1123_and_the_users_name_is_kept(name):
    from coiled_k8s.offline.store import ObjectStore

    base = r.cluster_base(name)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", base) and len(base) <= 40
    spec = _small_spec().model_copy(update={"name": name})
    owner = {"name": r.owner_name(name), "uid": "0f0e", "namespace": "default"}
    manifests = {
        "configmaps": [r.owner_manifest(name, K8sOptions(), "{}")],
        "services": [r.service_manifest(name, K8sOptions(), owner)],
        "pods": [r.pod_manifest(name, role, spec, K8sOptions(), owner, "img", [], None) for role in ("scheduler", "worker")],
        "secrets": [r.secret_manifest(name, K8sOptions(), owner, {})],
    }
    store = ObjectStore()
    for resource, items in manifests.items():
        for manifest in items:
            meta = manifest["metadata"]
            if "generateName" in meta:  # the longest name the server may generate
                meta["name"] = meta.pop("generateName") + "zzzzz"
            assert len(meta["name"]) <= 63
            kind = {"configmaps": "ConfigMap", "services": "Service", "pods": "Pod", "secrets": "Secret"}[resource]
            store._validate(resource, kind, {**manifest, "kind": kind, "apiVersion": "v1"}, "Strict")  # the offline API's rules
            assert meta["annotations"][r.ANNOTATION_NAME] == name
    assert r.cluster_base(name) != r.cluster_base(name.upper()) or name == name.upper()


def test_pod_template_options_and_resources():
    options = K8sOptions(
        node_selector={"pool": "dask"}, tolerations=[{"key": "dask", "operator": "Exists"}], labels={"team": "a"},
        annotations={"note": "b"}, image_pull_secrets=["regcred"], service_account="sa",
        pod_template={"spec": {"priorityClassName": "batch", "containers": [{"name": "worker", "env": [{"name": "X", "value": "1"}]}]},
                      "metadata": {"labels": {"coiled.io/cluster": "hijack", "extra": "y"}}})
    spec = _small_spec(worker_gpu=1)
    pod = r.pod_manifest("x", "worker", spec, options, {"name": "x-cluster", "uid": "u", "namespace": "d"}, "img", ["a==1"], "sa")
    body = pod["spec"]
    assert body["nodeSelector"] == {"pool": "dask"} and body["tolerations"][0]["key"] == "dask"
    assert body["imagePullSecrets"] == [{"name": "regcred"}] and body["serviceAccountName"] == "sa"
    assert body["priorityClassName"] == "batch" and body["restartPolicy"] == "Never"
    container = body["containers"][0]
    assert {"name": "X", "value": "1"} in container["env"] and {"name": "EXTRA_PIP_PACKAGES", "value": "a==1"} in container["env"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"] == {"cpu": "1", "memory": str(2**30)}
    assert pod["metadata"]["labels"]["coiled.io/cluster"] == "x" and pod["metadata"]["labels"]["extra"] == "y"
    assert pod["metadata"]["annotations"]["note"] == "b"
    assert not body["automountServiceAccountToken"]  # workers never talk to the API
    # Each pod mounts only its own role's TLS material.
    secret_items = next(v for v in body["volumes"] if v["name"] == "secrets")["secret"]["items"]
    assert {"key": "worker.json", "path": "tls.json"} in secret_items
    assert not any(item["key"] == "scheduler.json" for item in secret_items)


def _small_spec(**changes):
    from coiled_core.spec import resolve_cluster_spec

    return resolve_cluster_spec({"name": "x", "backend": "k8s", "n_workers": 1, "worker_cpu": 1,
                                 "worker_memory": "1 GiB", **changes})


def test_bad_label_values_are_refused():
    with pytest.raises(ValueError, match="label values"):
        K8sOptions(labels={"team": "not ok!"})


def test_import_is_cheap_and_the_add_on_needs_only_the_standard_library():
    code = ("import sys, coiled_k8s, coiled_k8s.plugin, coiled_k8s.node; "
            "print(json.dumps(sorted(m for m in ('kubernetes', 'urllib3') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
    imported = {n.names[0].name.split(".")[0] for n in ast.walk(ast.parse((PACKAGE / "node.py").read_text()))
                if isinstance(n, (ast.Import, ast.ImportFrom)) and isinstance(n, ast.Import)}
    imported |= {n.module.split(".")[0] for n in ast.walk(ast.parse((PACKAGE / "node.py").read_text()))
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= set(sys.stdlib_module_names) | {"coiled_core", "__future__"}


def test_the_agent_bundle_fits_a_configmap(tmp_path):
    from coiled_core.backend import agent_bundle

    bundle = agent_bundle(tmp_path, extra_modules=["coiled_k8s.node"])
    assert bundle.stat().st_size < r.CONFIGMAP_LIMIT / 2  # room to grow, and for the node configs


def test_coiled_tags_become_labels():
    from coiled_core.plugins import load_backend

    assert load_backend("k8s").keyword_options() == {"tags": "labels", "allow_ingress_from": "allow_ingress_from"}
    assert K8sOptions(labels={"team": "data"}).labels == {"team": "data"}


def test_a_client_outside_kubernetes_is_told_about_cluster_ip(monkeypatch):
    from coiled_k8s.plugin import preflight

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("DASK_COILED__LOOPBACK_ADDRESSES", "false")
    with pytest.warns(UserWarning, match="LoadBalancer"):
        preflight(_small_spec(), K8sOptions())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preflight(_small_spec(), K8sOptions(service_type="LoadBalancer"))


@pytest.mark.parametrize("pip", [[], ["a==1"]])
@pytest.mark.parametrize("role", ["scheduler", "worker"])
def test_pods_meet_the_restricted_pod_security_standard(role, pip):
    from coiled_k8s.offline.podsecurity import violations

    owner = {"name": "x-cluster", "uid": "u", "namespace": "d"}
    pod = r.pod_manifest("x", role, _small_spec(), K8sOptions(), owner, "img", pip, None)
    assert violations(pod, "restricted") == []
    context = pod["spec"]["securityContext"]
    assert context["runAsNonRoot"] and context["runAsUser"] == r.RUN_AS_USER != 0
    assert isinstance(context["runAsGroup"], int) and context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["containers"][0]["securityContext"] == {"allowPrivilegeEscalation": False,
                                                               "capabilities": {"drop": ["ALL"]}}
    # pip packages go to an emptyDir of the pod, not into the image's Python.
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    if pip:
        assert env["COILED_K8S_PACKAGES"] == r.PACKAGES_DIR
        assert {"name": "packages", "emptyDir": {}} in pod["spec"]["volumes"]
        assert "--prefix \"$COILED_K8S_PACKAGES\"" in r.BOOT


def _admitted(pod):
    """``pod`` as the offline API server takes it (schemas and server rules; raises ApiError)."""
    from coiled_k8s.offline.store import ObjectStore

    body = {**pod, "kind": "Pod", "apiVersion": "v1"}
    body["metadata"] = {**pod["metadata"], "name": pod["metadata"].get("name") or pod["metadata"]["generateName"] + "z"}
    ObjectStore()._validate("pods", "Pod", body, "Strict")
    return pod


def _pods(template):
    owner = {"name": "x-cluster", "uid": "u", "namespace": "d"}
    options = K8sOptions(pod_template=template)
    return {role: _admitted(r.pod_manifest("x", role, _small_spec(), options, owner, "img", [], None))
            for role in ("scheduler", "worker")}


def test_one_pod_template_sets_the_dask_container_of_both_roles():
    # Named after one role, as a user writes it: it still applies to the other role's container
    # (it used to become a second container, without an image, in the scheduler pod: 422).
    template = {"spec": {"containers": [{"name": "worker", "env": [{"name": "X", "value": "1"}],
                                         "imagePullPolicy": "Always"}]}}
    for role, pod in _pods(template).items():
        [container] = pod["spec"]["containers"]
        assert container["name"] == role and container["image"] == "img"
        assert {"name": "X", "value": "1"} in container["env"] and container["imagePullPolicy"] == "Always"


def test_per_role_pod_templates_and_sidecars():
    sidecar = {"name": "proxy", "image": "envoy:1"}
    pods = _pods({"scheduler": {"spec": {"priorityClassName": "high", "containers": [{"name": "x"}, sidecar]}},
                  "worker": {"metadata": {"annotations": {"a": "b"}}, "spec": {"containers": [{"env": [
                      {"name": "Y", "value": "2"}]}]}}})
    assert pods["scheduler"]["spec"]["priorityClassName"] == "high"
    assert [c["name"] for c in pods["scheduler"]["spec"]["containers"]] == ["scheduler", "proxy"]
    assert "priorityClassName" not in pods["worker"]["spec"] and pods["worker"]["metadata"]["annotations"]["a"] == "b"
    assert {"name": "Y", "value": "2"} in pods["worker"]["spec"]["containers"][0]["env"]
    assert "a" not in pods["scheduler"]["metadata"]["annotations"]


def test_a_pod_template_mixing_both_forms_is_refused():
    with pytest.raises(ValueError, match="one per role"):
        K8sOptions(pod_template={"worker": {}, "spec": {}})


def test_a_planted_agent_bundle_is_never_shipped(tmp_path, monkeypatch):
    """The bundle is built in this user's own directory and used only if its content is what this
    machine's files make: a zip of the expected name planted there (a shared temporary directory
    made that possible) is rebuilt over, and another user's directory is refused."""
    import os
    import zipfile

    import dask
    from coiled_k8s.plugin import _bundle

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    real = _bundle()  # by default in ~/.cache/coiled/k8s, made 0700
    [made] = (tmp_path / "home" / ".cache" / "coiled" / "k8s").glob("coiled_core-*.zip")
    assert made.parent.stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # as /tmp is
    with zipfile.ZipFile(made) as archive:
        names = archive.namelist()
    with zipfile.ZipFile(shared / made.name, "w") as planted:
        for name in names:
            planted.writestr(name, "import os; os.system('steal the keys')" if name == "coiled_core/__init__.py" else "")
    with dask.config.set({"coiled.k8s.bundle_directory": str(shared)}):
        assert _bundle() == real
        assert shared.stat().st_mode & 0o777 == 0o700
        with zipfile.ZipFile(shared / made.name) as archive:
            assert b"steal" not in archive.read("coiled_core/__init__.py")
    if os.getuid() == 0:  # only root can give a directory away
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        with dask.config.set({"coiled.k8s.bundle_directory": str(theirs)}), pytest.raises(PermissionError):
            _bundle()
