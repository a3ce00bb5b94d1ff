"""The ``k8s`` backend's hooks: a Dask cluster of pods, owned by one ConfigMap, with no operator.

See ``resources.py`` for what a cluster is made of and ``README.md`` for options, RBAC and design.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from coiled_core.backend import (
    HOOK_API_VERSION,  # noqa: F401  (declared, or the core refuses this backend)
    AddOnRef,
    ClaimLease,
    ClusterRecord,
    ClusterSpec,
    ClusterSpecError,
    ClusterState,
    ProvisionError,
    TLSPolicy,
    WorkerRecord,
    agent_bundle,
    build_node_config,
    client_cidr,
    config_get,
    hookimpl,
    loopback_mode,
    make_private_dirs,
    map_address,
    past_lifetime,
    software_environment,
)
from coiled_k8s import resources as r
from coiled_k8s.client import (
    CONCURRENCY,
    Kube,
    connect,
    ignore_missing,
    list_all,
    pod_log,
    reason_of,
    retrying,
    status_of,
)
from coiled_k8s.options import INGRESS_EVERYONE, INGRESS_ME, K8sOptions, default_image

logger = logging.getLogger(__name__)
BACKEND = "k8s"
ADDON = "coiled_k8s.node:KubernetesNode"
#: Container states in which a pod will not start by itself.
FAILED_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                  "CreateContainerError", "CrashLoopBackOff"}
#: How long teardown waits for the garbage collector and the pods' graceful ends.
TEARDOWN_TIMEOUT = 90.0
#: Every object is sent with strict field validation: a field the server does not know (a typo in
#: a ``pod_template``, a field newer than the server) is an error naming it, not silently dropped.
STRICT = {"field_validation": "Strict"}
#: Lines of each pod's log kept on this machine when teardown deletes the pod.
KEPT_LOG_LINES = 2000


@hookimpl
def backend_options_model():
    return K8sOptions


@hookimpl
def keyword_options():
    # Coiled's tags become labels (and must be valid label values), allow_ingress_from the
    # LoadBalancer's source ranges; the other keywords name cloud machines and mean nothing to
    # pods: the core accepts them with a warning.
    return {"tags": "labels", "allow_ingress_from": "allow_ingress_from"}


@hookimpl
def tls_policy(options):
    # Every pod of the Kubernetes cluster can reach the scheduler: without TLS it runs their code.
    return TLSPolicy(default=True, required=True)


@hookimpl
def preflight(spec, options):
    software = software_environment(spec) if spec.software else None
    if software is not None and (software.conda or software.post_build or software.include_local_code):
        raise ClusterSpecError("software: the k8s backend installs pip packages at pod start; conda packages, "
                               "post_build and include_local_code need an image of your own (container=...)")
    if spec.adaptive is None and spec.n_workers > 5000:
        raise ClusterSpecError("n_workers: at most 5000 worker pods per cluster")
    if options.service_type == "NodePort" and options.allow_ingress_from not in (None, INGRESS_EVERYONE):
        warnings.warn("allow_ingress_from: a NodePort Service cannot be restricted to some addresses (Kubernetes "
                      "has no source ranges for it); every address the nodes' firewall admits reaches the "
                      "scheduler's port (TLS still authenticates every client). Use a LoadBalancer, or restrict the "
                      "node ports in your cloud's firewall", UserWarning, stacklevel=2)
    if options.service_type == "ClusterIP" and not os.environ.get("KUBERNETES_SERVICE_HOST") and not loopback_mode():
        warnings.warn("this client runs outside Kubernetes, where a ClusterIP Service is reachable only through a "
                      "VPN or route into the cluster; backend_options={'service_type': 'LoadBalancer'} (or "
                      "'NodePort') makes the scheduler reachable from here", UserWarning, stacklevel=2)


# -- claims ----------------------------------------------------------------------------------
@hookimpl
def claim_name(name, options):
    kube = connect(options)
    for _ in range(20):
        try:
            retrying(kube.core.create_namespaced_config_map, kube.namespace,
                     r.owner_manifest(name, options, ClaimLease.new().to_json()), **STRICT)
            return True
        except Exception as e:
            if status_of(e) != 409:
                raise
        owner = ignore_missing(kube.core.read_namespaced_config_map, r.owner_name(name), kube.namespace)
        if owner is None:
            continue  # deleted meanwhile: try again
        if (owner.metadata.annotations or {}).get(r.ANNOTATION_NAME) != name:
            raise ClusterSpecError(f"name: ConfigMap {owner.metadata.name!r} in namespace {kube.namespace!r} exists "
                                   "and is not this cluster's; choose another name or namespace")
        if owner.metadata.deletion_timestamp:
            time.sleep(0.5)  # an ending cluster of this name: wait for it to go
            continue
        record = describe(name, options)
        lease = ClaimLease.from_json((owner.data or {}).get("claim", ""))
        if not lease.is_stale(cluster_live=record is not None and record.state.is_live):
            return False
        _delete_owner(kube, owner.metadata.name, owner.metadata.uid)  # stale: take it over
        _wait_gone(kube, owner.metadata.name, owner.metadata.uid, TEARDOWN_TIMEOUT)
    return False


def _delete_owner(kube: Kube, name: str, uid: str, policy: str = "Foreground") -> None:
    from kubernetes import client

    body = client.V1DeleteOptions(propagation_policy=policy, preconditions=client.V1Preconditions(uid=uid))
    try:
        retrying(kube.core.delete_namespaced_config_map, name, kube.namespace, body=body)
    except Exception as e:
        if status_of(e) not in (404, 409):  # gone, or another incarnation holds the name now
            raise


def _wait_gone(kube: Kube, name: str, uid: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owner = ignore_missing(kube.core.read_namespaced_config_map, name, kube.namespace)
        if owner is None or owner.metadata.uid != uid:
            return True
        time.sleep(0.2)
    return False


# -- provision -------------------------------------------------------------------------------
def _image_and_packages(spec: ClusterSpec, options: K8sOptions) -> tuple[str, list[str]]:
    software = software_environment(spec) if spec.software else None
    default = default_image()
    image = spec.container or (software.container if software else None) or options.image or default
    pip = list(software.pip or []) if software is not None and software.kind != "conda" else []
    if image == default:
        # The software environment pins distributed to this client's version, which the default
        # image already has: installing it again at every pod start is a resolve for nothing.
        pip = [p for p in pip if not _is_client_distributed(p)]
    return image, pip


def _is_client_distributed(requirement: str) -> bool:
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    parsed = Requirement(requirement)
    return (canonicalize_name(parsed.name) == "distributed" and parsed.url is None and not parsed.extras
            and parsed.specifier.contains(version("distributed"), prereleases=True))


def _bundle() -> bytes:
    """The node agent bundle every pod runs: built in this user's own cache directory (never a
    shared one such as /tmp, where another user could plant a zip of that name), and a zip found
    there is used only if its content's sha256 is that of the files it is made from."""
    directory = Path(config_get("k8s.bundle_directory") or Path.home() / ".cache" / "coiled" / "k8s").expanduser()
    return agent_bundle(directory, extra_modules=["coiled_k8s.node"]).read_bytes()


def _source_ranges(options: K8sOptions) -> list[str] | None:
    """The LoadBalancer's ``loadBalancerSourceRanges``: None for a Service of another type or
    ``allow_ingress_from="everyone"``; for ``"me"`` (the default) this client's public address as a
    /32 (/128), as the AWS and GCP backends' firewall rules admit it. In loopback mode (the
    offline Kubernetes) the client is 127.0.0.1."""
    if options.service_type != "LoadBalancer" or options.allow_ingress_from == INGRESS_EVERYONE:
        return None
    if options.allow_ingress_from not in (None, INGRESS_ME):
        return list(options.allow_ingress_from)
    if loopback_mode():
        return ["127.0.0.1/32"]
    return [client_cidr(None, everyone=repr(INGRESS_EVERYONE))]


def _owner_ref(owner: Any) -> dict[str, str]:
    return {"name": owner.metadata.name, "uid": owner.metadata.uid, "namespace": owner.metadata.namespace}


@hookimpl
def provision(spec, options, tls):
    kube, name = connect(options), spec.name
    deadline = time.monotonic() + spec.timeout
    owner = kube.core.read_namespaced_config_map(r.owner_name(name), kube.namespace)
    ref = _owner_ref(owner)
    step = "allow_ingress_from"
    made: dict[str, str] = {}  # what this call created that garbage collection alone must remove
    try:
        ranges = _source_ranges(options)
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            step = "service"
            service = retrying(kube.core.create_namespaced_service, kube.namespace,
                               r.service_manifest(name, options, ref, ranges), **STRICT)
            scheme = "tls" if tls else "tcp"
            inside = f"{scheme}://{service.spec.cluster_ip}:{r.SCHEDULER_PORT}"  # what the workers use
            image, pip = _image_and_packages(spec, options)
            account = options.service_account or f"{r.cluster_base(name)}-scheduler"
            step = "objects"
            waits = [pool.submit(_create_secret, kube, name, spec, options, ref, tls, made),
                     pool.submit(_create_node_configmap, kube, name, spec, options, ref, inside)]
            if not options.service_account:
                waits += [pool.submit(_create_rbac, kube, name, options, ref)]
            for wait in waits:
                wait.result()
            step = "pods"
            scheduler = r.pod_manifest(name, "scheduler", spec, options, ref, image, pip, account)
            worker = r.pod_manifest(name, "worker", spec, options, ref, image, pip, options.service_account)
            # Scheduler and workers at once: workers retry until the scheduler answers.
            pods = [pool.submit(retrying, kube.core.create_namespaced_pod, kube.namespace, scheduler, **STRICT)]
            pods += [pool.submit(retrying, kube.core.create_namespaced_pod, kube.namespace, worker, **STRICT)
                     for _ in range(spec.n_workers)]
            for pod in pods:
                pod.result()
        step = "service address"
        address, dashboard = _client_addresses(kube, name, options, scheme, service, deadline)
        step = "claim"
        owner.data = {**(owner.data or {}), "claim": ClaimLease.from_json(owner.data["claim"]).provisioned().to_json(),
                      # The spec without its environ, which only the Secret holds (ConfigMaps are
                      # for what anyone who may read the namespace's configuration may see).
                      "spec": json.dumps(spec.model_dump(mode="json", exclude={"environ"})),
                      "scheduler_address": address, "dashboard_url": dashboard, "worker_pod": r.to_json(worker),
                      "created_at": str(time.time()), "secret_uid": made["secret_uid"]}
        retrying(kube.core.replace_namespaced_config_map, owner.metadata.name, kube.namespace, owner, **STRICT)
    except Exception as e:
        _remove(kube, name, ref["uid"], made.get("secret_uid"))
        if isinstance(e, (ProvisionError, ClusterSpecError)):
            raise
        raise ProvisionError(f"{step}: {reason_of(e)}") from e
    return describe(name, options)


def _create_secret(kube: Kube, name: str, spec: ClusterSpec, options: K8sOptions, ref: dict, tls: Any,
                   made: dict[str, str]) -> None:
    data = {"environ.json": json.dumps(spec.environ)}
    for role in ("scheduler", "worker"):
        data[f"{role}.json"] = json.dumps(tls.to_node_config(role) if tls else {})
    secret = retrying(kube.core.create_namespaced_secret, kube.namespace, r.secret_manifest(name, options, ref, data),
                      **STRICT)
    made["secret_uid"] = secret.metadata.uid


def _create_node_configmap(kube: Kube, name: str, spec: ClusterSpec, options: K8sOptions, ref: dict,
                           scheduler_address: str) -> None:
    addon = {"role": "scheduler", "namespace": ref["namespace"], "owner": ref["name"], "owner_uid": ref["uid"]}
    scheduler = build_node_config(spec, "scheduler", scheduler_port=r.SCHEDULER_PORT, dashboard_port=r.DASHBOARD_PORT,
                                  include_environ=False, addon=AddOnRef(ADDON, addon))
    worker = build_node_config(spec, "worker", scheduler_address=scheduler_address, include_environ=False,
                               addon=AddOnRef(ADDON, {"role": "worker"}))
    manifest = r.node_configmap(name, options, ref, {"scheduler.json": scheduler.to_json(),
                                                     "worker.json": worker.to_json()}, _bundle())
    if r.configmap_size(manifest) > r.CONFIGMAP_LIMIT:
        raise ProvisionError(f"objects: the node agent bundle is {r.configmap_size(manifest)} bytes, over the "
                             f"{r.CONFIGMAP_LIMIT}-byte limit of a ConfigMap")
    retrying(kube.core.create_namespaced_config_map, kube.namespace, manifest, **STRICT)


def _create_rbac(kube: Kube, name: str, options: K8sOptions, ref: dict) -> None:
    account, role, binding = r.rbac_manifests(name, options, ref)
    retrying(kube.core.create_namespaced_service_account, kube.namespace, account, **STRICT)
    retrying(kube.rbac.create_namespaced_role, kube.namespace, role, **STRICT)
    retrying(kube.rbac.create_namespaced_role_binding, kube.namespace, binding, **STRICT)


def _client_addresses(kube: Kube, name: str, options: K8sOptions, scheme: str, service: Any,
                      deadline: float) -> tuple[str, str]:
    """Where this client reaches the scheduler and the dashboard, per ``service_type``."""
    http = "https" if scheme == "tls" else "http"
    host, ports = service.spec.cluster_ip, {p.name: p for p in service.spec.ports}
    comm, dash = r.SCHEDULER_PORT, r.DASHBOARD_PORT
    if options.service_type == "LoadBalancer":
        while True:
            ingress = (service.status.load_balancer.ingress or []) if service.status and service.status.load_balancer else []
            if ingress:
                host = ingress[0].ip or ingress[0].hostname
                break
            if time.monotonic() > deadline:
                raise ProvisionError("timeout: the LoadBalancer Service got no address")
            time.sleep(1)
            service = kube.core.read_namespaced_service(service.metadata.name, kube.namespace)
    elif options.service_type == "NodePort":
        # The node the scheduler runs on (its hostIP needs no cluster-wide permission to read).
        comm, dash = ports["tcp-comm"].node_port, ports["http-dashboard"].node_port
        while True:
            pod = kube.core.read_namespaced_pod(f"{r.cluster_base(name)}-scheduler", kube.namespace)
            if pod.status and pod.status.host_ip:
                host = pod.status.host_ip
                break
            if time.monotonic() > deadline:
                raise ProvisionError("timeout: the scheduler pod was not placed on a node")
            time.sleep(0.5)
    return map_address(f"{scheme}://{host}:{comm}"), map_address(f"{http}://{host}:{dash}/status")


# -- describe, list --------------------------------------------------------------------------
def _waiting_reason(pod: Any) -> str | None:
    for status in (pod.status.container_statuses or []) if pod.status else []:
        waiting = status.state.waiting if status.state else None
        if waiting and waiting.reason in FAILED_WAITING:
            return f"{waiting.reason}: {waiting.message or ''}".strip()
    return None


def _pod_alive(pod: Any) -> bool:
    phase = pod.status.phase if pod.status else "Pending"
    return not pod.metadata.deletion_timestamp and phase in ("Pending", "Running") and _waiting_reason(pod) is None


#: Uids of worker pods already reported dead by this process (describe runs every second).
_reported_dead: set[str] = set()


def _report_dead_workers(name: str, pods: list[Any]) -> None:
    for pod in pods:
        if pod.metadata.uid in _reported_dead or pod.metadata.deletion_timestamp:
            continue
        why = _waiting_reason(pod) or (f"{pod.status.reason or 'Failed'}: {pod.status.message or 'exited with an error'}"
                                       if pod.status and pod.status.phase == "Failed" else None)
        if why:
            _reported_dead.add(pod.metadata.uid)
            logger.warning("cluster %r: worker pod %s died: %s", name, pod.metadata.name, why)


def _record(name: str, owner: Any, pods: list[Any]) -> ClusterRecord | None:
    data = owner.data or {}
    if "spec" not in data:
        return None  # only a claim: the cluster is being created (or its creator died)
    scheduler = next((p for p in pods if (p.metadata.labels or {}).get(r.LABEL_COMPONENT) == "scheduler"), None)
    worker_pods = [p for p in pods if (p.metadata.labels or {}).get(r.LABEL_COMPONENT) == "worker"]
    _report_dead_workers(name, worker_pods)
    workers = sorted((p for p in worker_pods if _pod_alive(p)), key=lambda p: p.metadata.name)
    if owner.metadata.deletion_timestamp:
        state = ClusterState.stopping
    elif scheduler is None or not _pod_alive(scheduler):
        failed = scheduler is not None and (scheduler.status.phase == "Failed" or _waiting_reason(scheduler))
        state = ClusterState.error if failed else ClusterState.stopped
    elif scheduler.status.phase == "Running" and all(p.status.phase == "Running" for p in workers):
        state = ClusterState.running
    else:
        state = ClusterState.starting
    return ClusterRecord(
        name=name, backend=BACKEND, state=state, spec=json.loads(data["spec"]),
        scheduler_address=data.get("scheduler_address"), dashboard_url=data.get("dashboard_url"),
        created_at=float(data.get("created_at") or owner.metadata.creation_timestamp.timestamp()),
        workers=[WorkerRecord(name=p.metadata.name, backend_ids={"pod": p.metadata.name}) for p in workers],
        backend_ids={"uid": owner.metadata.uid, "namespace": owner.metadata.namespace,
                     "owner": owner.metadata.name, "scheduler_pod": scheduler.metadata.name if scheduler else None})


def _pods(kube: Kube, label_selector: str) -> list[Any]:
    return list(list_all(kube.core.list_namespaced_pod, kube.namespace, label_selector))


@hookimpl
def describe(name, options):
    kube = connect(options)
    owner = ignore_missing(kube.core.read_namespaced_config_map, r.owner_name(name), kube.namespace)
    if owner is None or (owner.metadata.annotations or {}).get(r.ANNOTATION_NAME) != name:
        return None
    return _record(name, owner, _pods(kube, r.cluster_selector(name, owner.metadata.uid)))


def _owners(kube: Kube) -> list[Any]:
    found = list_all(kube.core.list_namespaced_config_map, kube.namespace,
                     r.selector(**{"app.kubernetes.io/managed-by": r.MANAGED_BY, r.LABEL_COMPONENT: "cluster"}))
    return [o for o in found if (o.metadata.annotations or {}).get(r.ANNOTATION_NAME)]


@hookimpl
def list_clusters(options):
    kube = connect(options)
    pods = _pods(kube, f"app.kubernetes.io/managed-by={r.MANAGED_BY},{r.LABEL_COMPONENT} in (scheduler,worker)")
    records = []
    for owner in _owners(kube):  # two list calls in all, whatever the number of clusters
        mine = [p for p in pods if (p.metadata.labels or {}).get(r.LABEL_UID) == owner.metadata.uid]
        record = _record(owner.metadata.annotations[r.ANNOTATION_NAME], owner, mine)
        if record is not None:
            records.append(record)
    return records


# -- scale -----------------------------------------------------------------------------------
@hookimpl
def scale(record, options, n_workers, retired, tls):
    kube = connect(options)
    owner = kube.core.read_namespaced_config_map(r.owner_name(record.name), kube.namespace)
    current = _record(record.name, owner, _pods(kube, r.cluster_selector(record.name, owner.metadata.uid)))
    if current is None or not current.state.is_live:
        raise ProvisionError(f"scale: cluster {record.name!r} is not running")
    doomed = [w for w in current.worker_names if w in set(retired)]  # names of this cluster's pods only
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for done in [pool.submit(ignore_missing, kube.core.delete_namespaced_pod, pod, kube.namespace)
                     for pod in doomed]:
            done.result()
        missing = n_workers - (len(current.workers) - len(doomed))
        template = json.loads(owner.data["worker_pod"])
        created = [pool.submit(retrying, kube.core.create_namespaced_pod, kube.namespace, template, **STRICT)
                   for _ in range(max(missing, 0))]
        errors = [f.exception() for f in created if f.exception() is not None]
    if errors:
        raise ProvisionError(f"scale: {len(errors)} worker pods could not be created: {reason_of(errors[0])}")
    return describe(record.name, options)


# -- teardown, gc ----------------------------------------------------------------------------
def _remove(kube: Kube, name: str, uid: str, secret_uid: str | None = None) -> None:
    """Delete the cluster incarnation ``uid`` and wait until nothing labelled with it remains.

    Secrets are not listed (the client needs no right to read them): the garbage collector
    deletes the cluster's Secret with its owner, and when its uid is known (``secret_uid``) it is
    deleted by name with that uid as a precondition, so never another incarnation's."""
    _keep_logs(kube, name, uid)
    # Workers first, while their scheduler still answers: a worker whose scheduler has gone
    # spends seconds trying to say goodbye to it. One call for all of them.
    workers = f"{r.LABEL_UID}={uid},{r.LABEL_COMPONENT}=worker"
    retrying(kube.core.delete_collection_namespaced_pod, kube.namespace, label_selector=workers)
    deadline = time.monotonic() + TEARDOWN_TIMEOUT
    while _pods(kube, workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    _delete_owner(kube, r.owner_name(name), uid)
    if not _wait_gone(kube, r.owner_name(name), uid, TEARDOWN_TIMEOUT):
        raise ProvisionError(f"teardown: ConfigMap {r.owner_name(name)!r} was not deleted within "
                             f"{TEARDOWN_TIMEOUT:g}s (is the garbage collector running?)")
    if secret_uid:
        _delete_secret(kube, f"{r.cluster_base(name)}-tls", secret_uid)
    left = _labelled(kube, r.cluster_selector(name, uid))
    for kind, obj_name in left:  # the collector missed them (say, an owner reference removed by hand)
        delete = getattr(kube.rbac if kind in ("role", "role_binding") else kube.core, f"delete_namespaced_{kind}")
        ignore_missing(delete, obj_name, kube.namespace, grace_period_seconds=0)
    if left and _labelled(kube, r.cluster_selector(name, uid)):
        raise ProvisionError(f"teardown: still there: {', '.join(f'{k} {n}' for k, n in left)}")


def _delete_secret(kube: Kube, name: str, uid: str) -> None:
    from kubernetes import client

    try:
        retrying(kube.core.delete_namespaced_secret, name, kube.namespace,
                 body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid)))
    except Exception as e:
        if status_of(e) not in (404, 409):  # gone (the collector was first), or not ours
            raise


#: The kinds a cluster is made of that teardown lists (the name in the client's methods, and the
#: API); its Secret is not listed (see :func:`_remove`).
KINDS = (("pod", "core"), ("service", "core"), ("config_map", "core"),
         ("service_account", "core"), ("role", "rbac"), ("role_binding", "rbac"))


def _labelled(kube: Kube, label_selector: str) -> list[tuple[str, str]]:
    """(kind, name) of every object carrying ``label_selector``; the pods' terminating ones too."""
    found = []
    for kind, api in KINDS:
        call = getattr(getattr(kube, api), f"list_namespaced_{kind}")
        found += [(kind, item.metadata.name) for item in list_all(call, kube.namespace, label_selector)]
    return found


@hookimpl
def teardown(record, options):
    kube = connect(options)
    owner = ignore_missing(kube.core.read_namespaced_config_map, r.owner_name(record.name), kube.namespace)
    uid = owner.metadata.uid if owner is not None else record.backend_ids.get("uid")
    if owner is not None and (owner.metadata.annotations or {}).get(r.ANNOTATION_NAME) == record.name:
        _remove(kube, record.name, uid, (owner.data or {}).get("secret_uid"))
    return record.model_copy(update={"state": ClusterState.stopped, "workers": []})


@hookimpl
def gc(options):
    kube = connect(options)
    deleted = []
    for record_or_owner in _owners(kube):
        owner, name = record_or_owner, record_or_owner.metadata.annotations[r.ANNOTATION_NAME]
        if owner.metadata.deletion_timestamp:
            continue  # being deleted
        record = _record(name, owner, _pods(kube, r.cluster_selector(name, owner.metadata.uid)))
        live = record is not None and record.state.is_live
        lease = ClaimLease.from_json((owner.data or {}).get("claim", ""))
        if live and not past_lifetime(record):
            continue
        if record is None and not lease.is_stale(cluster_live=False):
            continue  # being created
        _remove(kube, name, owner.metadata.uid, (owner.data or {}).get("secret_uid"))
        deleted.append(f"{name}: deleted ({record.state.value if record else 'stale claim'})")
    return deleted


# -- logs ------------------------------------------------------------------------------------
def _log_directory(kube: Kube, name: str, uid: str) -> Path:
    root = config_get("k8s.log_directory") or Path.home() / ".cache" / "coiled" / "k8s-logs"
    return Path(root).expanduser() / kube.namespace / r.cluster_base(name) / uid


def _pod_key(pod: Any) -> str:
    component = (pod.metadata.labels or {}).get(r.LABEL_COMPONENT)
    return "scheduler" if component == "scheduler" else pod.metadata.name


def _pod_log(kube: Kube, pod: Any, tail: int | None) -> str:
    try:
        return pod_log(kube.core, pod.metadata.name, kube.namespace, tail)
    except Exception as e:
        if status_of(e) not in (400, 404):
            raise
        # No log (yet, or any more): say what the pod is doing instead.
        status = pod.status
        lines = [f"pod {pod.metadata.name}: {status.phase if status else 'Pending'}; no log: {reason_of(e)}"]
        for condition in (status.conditions or []) if status else []:
            if condition.status == "False" and condition.message:
                lines.append(f"{condition.type}: {condition.reason}: {condition.message}")
        if waiting := _waiting_reason(pod):
            lines.append(waiting)
        return "\n".join(lines)


def _write_private(directory: Path, files: dict[str, str]) -> None:
    """Write ``files`` into ``directory``, readable by this user only (logs may hold what tasks
    printed): the directories from the log root down 0700, the files 0600."""
    make_private_dirs(str(directory))
    for level in (directory, directory.parent, directory.parent.parent, directory.parent.parent.parent):
        if level.stat().st_uid == os.getuid():  # uid, cluster, namespace and the root, where ours
            os.chmod(level, 0o700)
    for file_name, text in files.items():
        fd = os.open(directory / file_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)  # also when it existed
        with os.fdopen(fd, "w") as f:
            f.write(text)


def _keep_logs(kube: Kube, name: str, uid: str) -> None:
    """Copy the end of each pod's log to this machine before the pods (and their logs) go."""
    try:
        pods = _pods(kube, f"{r.LABEL_UID}={uid}")
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            texts = list(pool.map(lambda p: (_pod_key(p), _pod_log(kube, p, KEPT_LOG_LINES)), pods))
        _write_private(_log_directory(kube, name, uid), {f"{key}.log": text for key, text in texts})
    except Exception:
        logger.debug("keeping the logs of %s failed", name, exc_info=True)


@hookimpl
def logs(record, options, tail):
    kube = connect(options)
    owner = ignore_missing(kube.core.read_namespaced_config_map, r.owner_name(record.name), kube.namespace)
    uid = owner.metadata.uid if owner is not None else record.backend_ids.get("uid")
    result: dict[str, str] = {}
    if uid:
        pods = _pods(kube, f"{r.LABEL_UID}={uid}")
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            result = dict(pool.map(lambda p: (_pod_key(p), _pod_log(kube, p, tail)), pods))
    directories = [_log_directory(kube, record.name, uid)] if uid else []
    if not uid:  # which incarnation is unknown: every one this machine kept
        directories = sorted(_log_directory(kube, record.name, "x").parent.glob("*"), key=lambda p: p.stat().st_mtime)
    for directory in directories:
        for path in sorted(directory.glob("*.log")):
            if path.stem not in result:
                lines = path.read_text(errors="replace").splitlines()
                note = f"(pod {path.stem} is gone with its log; kept by coiled-k8s at teardown)"
                result[path.stem] = "\n".join([note, *lines][-tail:] if tail else [note, *lines])
    if not result:
        result["cluster"] = f"no pods of cluster {record.name!r} remain: their logs went with them"
    return result
