"""Names, labels and manifests of a cluster's Kubernetes objects.

One cluster is:

``<base>-cluster`` (ConfigMap)
    The owner of everything else, and the name's claim (made with create: 409 means someone else
    holds the name). Its data holds the claim's lease, the spec, the addresses and the worker pod
    template that ``scale`` uses. Deleting it deletes the cluster (garbage collection).
``<base>-scheduler`` (Service, Pod; ServiceAccount, Role and RoleBinding unless the user names a
service account)
    The scheduler; the Role allows exactly one thing: deleting this cluster's owner.
``<base>-worker-xxxxx`` (Pods, ``generateName``)
    One worker per pod, named after its pod.
``<base>-node`` (ConfigMap)
    The node agent bundle and both roles' node configs.
``<base>-tls`` (Secret)
    Each role's TLS material and the spec's ``environ``; each pod mounts only its role's keys.

``<base>`` is :func:`cluster_base` of the user's cluster name (a DNS-1123 label that starts with
a letter, as Service names must); the user's name is kept in the ``coiled.io/cluster-name``
annotation. The suffixes never end one another, so two clusters' names cannot collide.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from coiled_core.backend import dns_label

MANAGED_BY = "coiled-k8s"
LABEL_CLUSTER = "coiled.io/cluster"
LABEL_UID = "coiled.io/cluster-uid"
LABEL_COMPONENT = "app.kubernetes.io/component"
ANNOTATION_NAME = "coiled.io/cluster-name"
SCHEDULER_PORT, DASHBOARD_PORT = 8786, 8787
NODE_DIR, SECRETS_DIR = "/etc/coiled/node", "/etc/coiled/secrets"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
BUNDLE_KEY = "coiled_core.zip"
#: What the API server accepts in one ConfigMap.
CONFIGMAP_LIMIT = 1024 * 1024
#: Seconds past the lifetime cap after which Kubernetes itself ends the pods (activeDeadlineSeconds).
DEADLINE_GRACE = 60

#: Where a pod installs its software environment's pip packages: an emptyDir of its own, since
#: the pods run as a user that cannot write the image's Python (see :data:`RUN_AS_USER`).
PACKAGES_DIR = "/opt/coiled/packages"
#: The numeric user and group every container runs as. The Dask image has no user of its own
#: (it runs as root, which the restricted Pod Security Standard forbids) and needs none: nothing
#: is written outside the pod's volumes and /tmp. 1000 is the first ordinary user on most images;
#: ``pod_template={"spec": {"securityContext": {"runAsUser": ...}}}`` picks another.
RUN_AS_USER = 1000

# The container's command: install the software environment's pip packages as the Dask image's
# EXTRA_PIP_PACKAGES does (with uv when the image has it, else pip), then run the node agent.
# The packages are one requirement per line and go through a requirements file: a requirement may
# hold spaces (``name @ url``, markers) or glob characters (``dask[complete]``). They go under
# $COILED_K8S_PACKAGES (a prefix in the pod's own emptyDir, since the image's Python is not this
# user's to write), which is then put on PYTHONPATH and PATH for the agent and what it starts.
BOOT = """set -e
if [ -n "$EXTRA_PIP_PACKAGES" ]; then
  requirements="$COILED_K8S_PACKAGES/requirements.txt"
  printf '%s\\n' "$EXTRA_PIP_PACKAGES" > "$requirements"
  if command -v uv >/dev/null; then
    uv pip install --no-cache --python "$(command -v python)" --prefix "$COILED_K8S_PACKAGES" -r "$requirements"
  else python -m pip install --no-cache-dir --prefix "$COILED_K8S_PACKAGES" -r "$requirements"; fi
  site="$(python -c 'import sys, sysconfig
where = {"base": sys.argv[1], "platbase": sys.argv[1]}
scheme = sysconfig.get_preferred_scheme("prefix")
print(":".join(dict.fromkeys(sysconfig.get_path(k, scheme, where) for k in ("purelib", "platlib"))))' "$COILED_K8S_PACKAGES")"
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$site" PATH="$COILED_K8S_PACKAGES/bin:$PATH"
fi
exec python -m coiled_core.node "$0"
"""


def cluster_base(name: str) -> str:
    """The DNS label every object name of cluster ``name`` starts with (at most 40 characters,
    leaving room for the suffixes in a 63-character name)."""
    base = dns_label(name, max_length=40)
    return base if base[0].isalpha() else dns_label(name, max_length=40, prefix="dask-")


def owner_name(name: str) -> str:
    return f"{cluster_base(name)}-cluster"


def labels(name: str, component: str, uid: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The labels of one of the cluster's objects (``extra``, the user's, never override ours)."""
    ours = {"app.kubernetes.io/name": "dask", "app.kubernetes.io/managed-by": MANAGED_BY,
            LABEL_CLUSTER: cluster_base(name), LABEL_COMPONENT: component}
    if uid:
        ours[LABEL_UID] = uid
    return {**(extra or {}), **ours}


def selector(**terms: str) -> str:
    return ",".join(f"{key}={value}" for key, value in terms.items())


def cluster_selector(name: str, uid: str | None = None) -> str:
    """Everything of cluster ``name`` (of its incarnation ``uid``, when given)."""
    if uid:
        return f"{LABEL_UID}={uid}"
    return f"app.kubernetes.io/managed-by={MANAGED_BY},{LABEL_CLUSTER}={cluster_base(name)}"


def metadata(name: str, object_name: str, component: str, options: Any, owner: dict | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "labels": labels(name, component, owner and owner["uid"], options.labels),
        "annotations": {**options.annotations, ANNOTATION_NAME: name},
    }
    if object_name.endswith("-"):
        meta["generateName"] = object_name
    else:
        meta["name"] = object_name
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner["name"], "uid": owner["uid"]}]
    return meta


# -- the objects -----------------------------------------------------------------------------
def owner_manifest(name: str, options: Any, lease: str) -> dict[str, Any]:
    return {"metadata": metadata(name, owner_name(name), "cluster", options, None), "data": {"claim": lease}}


def service_manifest(name: str, options: Any, owner: dict, source_ranges: list[str] | None = None) -> dict[str, Any]:
    """The scheduler's Service; a LoadBalancer admits only ``source_ranges`` (None: anyone)."""
    base = cluster_base(name)
    spec: dict[str, Any] = {
        "type": options.service_type,
        "selector": {LABEL_UID: owner["uid"], LABEL_COMPONENT: "scheduler"},
        "ports": [{"name": "tcp-comm", "port": SCHEDULER_PORT, "targetPort": "tcp-comm"},
                  {"name": "http-dashboard", "port": DASHBOARD_PORT, "targetPort": "http-dashboard"}],
    }
    if options.service_type == "LoadBalancer" and source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    return {"metadata": metadata(name, f"{base}-scheduler", "scheduler", options, owner), "spec": spec}


def node_configmap(name: str, options: Any, owner: dict, configs: dict[str, str], bundle: bytes) -> dict[str, Any]:
    import base64

    return {"metadata": metadata(name, f"{cluster_base(name)}-node", "node", options, owner),
            "data": configs, "binaryData": {BUNDLE_KEY: base64.b64encode(bundle).decode()}}


def configmap_size(manifest: dict[str, Any]) -> int:
    import base64

    return (sum(len(v.encode()) for v in manifest.get("data", {}).values())
            + sum(len(base64.b64decode(v)) for v in manifest.get("binaryData", {}).values()))


def secret_manifest(name: str, options: Any, owner: dict, data: dict[str, str]) -> dict[str, Any]:
    return {"metadata": metadata(name, f"{cluster_base(name)}-tls", "secrets", options, owner),
            "type": "Opaque", "stringData": data}


def rbac_manifests(name: str, options: Any, owner: dict) -> tuple[dict, dict, dict]:
    """ServiceAccount, Role and RoleBinding of the scheduler: it may delete its owner, nothing else."""
    account = f"{cluster_base(name)}-scheduler"
    meta = lambda: metadata(name, account, "scheduler", options, owner)
    role = {"metadata": meta(), "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["delete"],
                                           "resourceNames": [owner["name"]]}]}
    binding = {"metadata": meta(), "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
               "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": owner["namespace"]}]}
    return {"metadata": meta(), "automountServiceAccountToken": False}, role, binding


def pod_manifest(name: str, role: str, spec: Any, options: Any, owner: dict, image: str,
                 pip_packages: list[str], service_account: str | None) -> dict[str, Any]:
    """The scheduler's pod, or the template of every worker pod (``role="worker"``)."""
    base = cluster_base(name)
    cpu, memory = (spec.scheduler_cpu, spec.scheduler_memory) if role == "scheduler" else (spec.worker_cpu, spec.worker_memory)
    resources: dict[str, dict[str, Any]] = {"requests": {"cpu": str(cpu), "memory": str(memory)},
                                            "limits": {"cpu": str(cpu), "memory": str(memory)}}
    if role == "worker" and spec.worker_gpu:
        resources["limits"]["nvidia.com/gpu"] = str(spec.worker_gpu)
    env = [{"name": "PYTHONPATH", "value": f"{NODE_DIR}/{BUNDLE_KEY}"},
           {"name": "COILED_K8S_SECRETS", "value": SECRETS_DIR},
           {"name": "COILED_K8S_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    if role == "scheduler":
        env.append({"name": "COILED_K8S_SERVICE_ACCOUNT_DIR", "value": SERVICE_ACCOUNT_DIR})
    mounts = [{"name": "node", "mountPath": NODE_DIR, "readOnly": True},
              {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True}]
    if pip_packages:
        env += [{"name": "EXTRA_PIP_PACKAGES", "value": "\n".join(pip_packages)},
                {"name": "COILED_K8S_PACKAGES", "value": PACKAGES_DIR}]
        mounts.append({"name": "packages", "mountPath": PACKAGES_DIR})
    container: dict[str, Any] = {
        "name": role, "image": image, "command": ["sh", "-c", BOOT, f"{NODE_DIR}/{role}.json"], "env": env,
        "resources": resources, "volumeMounts": mounts,
        # The restricted Pod Security Standard, with the pod's securityContext below.
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if role == "scheduler":
        container["ports"] = [{"name": "tcp-comm", "containerPort": SCHEDULER_PORT},
                              {"name": "http-dashboard", "containerPort": DASHBOARD_PORT}]
        # The Service sends connections to the scheduler only once it listens.
        container["readinessProbe"] = {"tcpSocket": {"port": "tcp-comm"}, "periodSeconds": 2, "failureThreshold": 2}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 20,
        "enableServiceLinks": False,
        # Only the scheduler talks to the API (to delete its cluster when it ends).
        "automountServiceAccountToken": role == "scheduler",
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
                            "fsGroup": RUN_AS_USER, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [
            {"name": "node", "configMap": {"name": f"{base}-node", "items": [
                {"key": f"{role}.json", "path": f"{role}.json"}, {"key": BUNDLE_KEY, "path": BUNDLE_KEY}]}},
            {"name": "secrets", "secret": {"secretName": f"{base}-tls", "items": [
                {"key": f"{role}.json", "path": "tls.json"}, {"key": "environ.json", "path": "environ.json"}]}},
        ],
    }
    if pip_packages:
        pod_spec["volumes"].append({"name": "packages", "emptyDir": {}})
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    if spec.cluster_timeout:  # the second line, should the node itself fail to end the cluster
        pod_spec["activeDeadlineSeconds"] = int(spec.cluster_timeout) + DEADLINE_GRACE
    if options.node_selector:
        pod_spec["nodeSelector"] = dict(options.node_selector)
    if options.tolerations:
        pod_spec["tolerations"] = list(options.tolerations)
    if options.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in options.image_pull_secrets]
    object_name = f"{base}-scheduler" if role == "scheduler" else f"{base}-worker-"
    pod = {"metadata": metadata(name, object_name, role, options, owner), "spec": pod_spec}
    return merge_pod_template(pod, options.pod_template, role)


ROLES = ("scheduler", "worker")


def role_template(template: dict[str, Any], role: str) -> dict[str, Any]:
    """The part of a ``pod_template`` for ``role``: the per-role form ``{"scheduler": ...,
    "worker": ...}`` gives each role its own (a role left out gets none); any other template
    applies to both."""
    if template and set(template) <= set(ROLES):
        return template.get(role) or {}
    return template


def merge_pod_template(pod: dict[str, Any], template: dict[str, Any], role: str | None = None) -> dict[str, Any]:
    """``pod`` with the user's partial pod merged in.

    The template may be a pod (``{"metadata": ..., "spec": ...}``) or just a spec, and either for
    both roles or per role (:func:`role_template`). Maps merge; the template's *first* container
    is the Dask container (whatever its name: the pod's keeps its own) and merges into it, any
    further one is added as a sidecar (it needs its own image); other lists of named items
    (``volumes``, ``env``, ...) merge by name; other values replace ours. Our labels and owner stay.
    """
    template = role_template(template, role) if role else template
    if not template:
        return pod
    if "spec" not in template and "metadata" not in template:
        template = {"spec": template}
    template = copy.deepcopy(template)
    containers = (template.get("spec") or {}).get("containers")
    if containers:
        ours = pod["spec"]["containers"][0]["name"]
        template["spec"]["containers"] = [{**containers[0], "name": ours}, *containers[1:]]
    merged = _merge(copy.deepcopy(pod), template)
    merged["metadata"]["labels"] = {**merged["metadata"].get("labels", {}), **pod["metadata"]["labels"]}
    for key in ("name", "generateName", "ownerReferences"):
        if key in pod["metadata"]:
            merged["metadata"][key] = pod["metadata"][key]
    return merged


def _merge(ours: Any, theirs: Any) -> Any:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key, value in theirs.items():
            ours[key] = _merge(ours[key], value) if key in ours else value
        return ours
    if isinstance(ours, list) and isinstance(theirs, list) and all(isinstance(i, dict) and "name" in i for i in ours + theirs):
        by_name = {i["name"]: i for i in ours}
        for item in theirs:
            if item["name"] in by_name:
                _merge(by_name[item["name"]], item)
            else:
                ours.append(item)
        return ours
    return theirs


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
