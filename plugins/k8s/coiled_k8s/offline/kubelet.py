"""The offline cluster's one node: a kube-scheduler and a kubelet that runs containers as processes.

Each tick (on every change in the store, or every ``interval`` seconds) the node

- *schedules* pending pods: a pod fits if its ``nodeSelector`` matches the node's labels and its
  requests (``cpu``, ``memory``, ``nvidia.com/gpu``) and the pod count fit what the node has
  left; otherwise its ``PodScheduled`` condition says ``Unschedulable`` with the reason, as the
  real scheduler reports it, and it stays Pending;
- *starts* scheduled pods: an image the node does not know (see :mod:`.images`) is an
  ``ErrImagePull`` then ``ImagePullBackOff``; a missing ConfigMap or Secret keeps the pod in
  ``ContainerCreating``. Otherwise each container's ``command`` + ``args`` run as one local
  process in its own session, in ``<workdir>/pods/<namespace>/<name>/``, with ``env`` (values and
  ``fieldRef``s of the downward API), the container's own writable layer over the image's
  Python environment (:func:`.images.container_layer`) first on ``PATH`` (for a container that
  runs as root, the image's user; one with a ``runAsUser`` of another uses the image as it is
  and may write only its volumes, and one with ``runAsNonRoot`` but no ``runAsUser`` fails with
  ``CreateContainerConfigError``, as the image's user is root), the
  service-account token, ConfigMaps and Secrets written as files, ``KUBERNETES_SERVICE_HOST`` and
  ``_PORT`` pointing at the fake API, and ``COILED_NODE_HOST`` set to the pod's loopback address
  (see :mod:`.network`; ``DASK_COILED__LOOPBACK_ADDRESSES=true`` too);
- *reports* phase, conditions, ``podIP``, ``hostIP`` and container states, and ends pods past
  their ``activeDeadlineSeconds`` (``Failed``, reason ``DeadlineExceeded``);
- *terminates* deleted pods: SIGTERM to every process of the pod, SIGKILL after the grace period,
  then removes the object.

There is no mount namespace: each volume's ``mountPath`` is a directory of the pod, and any
``command``, ``args`` or ``env`` value that is a mounted path (or a ``:``-separated list of them)
is rewritten to the local directory. Paths written inside files are not rewritten.

Every process carries ``COILED_OFFLINE_KUBELET=<runner mark>:<pod uid>`` in its environment (the
mark: the runner's pid, start time and a random token, new for every node), so the whole pod is
found however its processes detach, and :meth:`OfflineNode.stop` kills exactly this run's. A
node kills nothing when it starts: processes of another run (one that was SIGKILLed included)
are not provably its own; the node agent in them ends them on its own timeouts.
"""

from __future__ import annotations

import base64
import contextlib
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from coiled_core.backend import loopback_address
from coiled_k8s.offline.images import container_layer
from coiled_k8s.offline.network import POD_NETWORK, AddressPool, ServiceProxy
from coiled_k8s.offline.store import ObjectStore, now_rfc3339

MARK_ENV = "COILED_OFFLINE_KUBELET"
NODE_NAME = "offline-node"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_INHERIT_ENV = ("COILED_STANDIN", "HOME", "LANG", "LC_ALL", "SSL_CERT_FILE", "SSL_CERT_DIR", "UV_CACHE_DIR", "UV_INDEX_URL",
                "PIP_INDEX_URL", "PIP_FIND_LINKS")
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``1Gi``, ``512M``) as a number."""
    text = str(value).strip()
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.eE+-]+)([A-Za-z]*)", text)
    if not match or match.group(2) not in ("", *units):
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * units.get(match.group(2), 1)


def runner_mark() -> str:
    """This process's mark: pid, start time and a random token."""
    me = psutil.Process()
    return f"{me.pid}:{me.create_time():.3f}:{secrets.token_hex(6)}"


def marked_processes(prefix: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["environ"]):
        with contextlib.suppress(psutil.Error):
            mark = (proc.info["environ"] or {}).get(MARK_ENV)
            if mark is not None and mark.startswith(prefix):
                found.append(proc)
    return found


def kill_processes(procs: list[psutil.Process], grace: float) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


@dataclass
class PodRuntime:
    """What the kubelet keeps about a started pod."""

    namespace: str
    name: str
    uid: str
    directory: Path
    pod_ip: str
    token: str
    labels: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)  # container -> process
    started: float = field(default_factory=time.time)
    ended: bool = False
    terminating: bool = False


class OfflineNode:
    """The node: scheduler, kubelet and kube-proxy of the offline cluster."""

    def __init__(self, store: ObjectStore, api: Any, workdir: Path, images: dict[str, str], api_port: int,
                 ca_pem: str, *, cpu: str = "64", memory: str = "256Gi", gpus: int = 0, max_pods: int = 110,
                 run_processes: bool = True, interval: float = 0.2):
        self.store, self.api, self.workdir, self.images = store, api, workdir, images
        self.api_port, self.ca_pem, self.run_processes, self.interval = api_port, ca_pem, run_processes, interval
        self.allocatable = {"cpu": parse_quantity(cpu), "memory": parse_quantity(memory), "nvidia.com/gpu": gpus,
                            "pods": max_pods}
        self.labels = {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "amd64")}
        self.pod_ips = AddressPool(POD_NETWORK)
        self.node_ip = self.pod_ips.take()
        self.mark = runner_mark()
        self.runtimes: dict[str, PodRuntime] = {}  # pod uid -> runtime
        self.proxy = ServiceProxy(self.node_ip, self._endpoints)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="offline-kubelet", daemon=True)

    def start(self) -> None:
        # Nothing is reaped here: a process another run started is not provably this run's to kill.
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.store.changed:
            self.store.changed.notify_all()
        self._thread.join(10)
        self.proxy.close()
        kill_processes(marked_processes(self.mark), 3)

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the node must survive a bug in one pod's handling
                import logging

                logging.getLogger(__name__).exception("offline kubelet tick failed")
            with self.store.changed:
                self.store.changed.wait(self.interval)

    def tick(self) -> None:
        self.store.collect_garbage()
        pods = [obj for _, obj in self.store.find(lambda res, o: res == "pods")]
        present = {p["metadata"]["uid"] for p in pods}
        for pod in pods:
            meta, uid = pod["metadata"], pod["metadata"]["uid"]
            if meta.get("deletionTimestamp"):
                self._terminate(pod)
            elif not pod["spec"].get("nodeName"):
                self._schedule(pod, pods)
            elif uid not in self.runtimes:
                self._start(pod)
            else:
                self._watch(pod, self.runtimes[uid])
        for uid in [uid for uid in self.runtimes if uid not in present]:  # removed without a kubelet
            runtime = self.runtimes.pop(uid)
            self._kill_runtime(runtime, 0)
        services = [s for _, s in self.store.find(lambda res, o: res == "services")]
        # As kube-proxy rejects connections to a Service without ready endpoints, listen only while there are some.
        self.proxy.sync([s for s in services if any(self._endpoints(s, p) for p in s["spec"].get("ports") or [])])

    # -- scheduling ------------------------------------------------------------------------
    def _requests(self, pod: dict) -> dict[str, float]:
        total = {"cpu": 0.0, "memory": 0.0, "nvidia.com/gpu": 0.0}
        for container in pod["spec"].get("containers") or []:
            resources = container.get("resources") or {}
            wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
            for key in total:
                if key in wanted:
                    total[key] += parse_quantity(wanted[key])
        return total

    def _schedule(self, pod: dict, pods: list[dict]) -> None:
        placed = [p for p in pods if p["spec"].get("nodeName") and p["status"].get("phase") in ("Pending", "Running")]
        reasons = []
        selector = pod["spec"].get("nodeSelector") or {}
        if any(self.labels.get(k) != v for k, v in selector.items()):
            reasons.append("1 node(s) didn't match Pod's node affinity/selector")
        if len(placed) + 1 > self.allocatable["pods"]:
            reasons.append("1 Too many pods")
        used = {key: sum(self._requests(p)[key] for p in placed) for key in ("cpu", "memory", "nvidia.com/gpu")}
        for key, amount in self._requests(pod).items():
            if amount and used[key] + amount > self.allocatable[key]:
                reasons.append(f"1 Insufficient {key}")
        meta = pod["metadata"]
        if reasons:
            message = f"0/1 nodes are available: {', '.join(reasons)}. preemption: 0/1 nodes are available."

            def unschedulable(obj: dict) -> None:
                obj["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                "message": message, "lastTransitionTime": now_rfc3339()}]
            if (pod["status"].get("conditions") or [{}])[0].get("message") != message:
                self.store.update_status("pods", meta["namespace"], meta["name"], unschedulable)
            return

        def bind(obj: dict) -> None:
            obj["spec"]["nodeName"] = NODE_NAME
            obj["status"]["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}]
        self.store.update_status("pods", meta["namespace"], meta["name"], bind)

    # -- starting --------------------------------------------------------------------------
    def _set_waiting(self, pod: dict, reason: str, message: str) -> None:
        meta = pod["metadata"]
        statuses = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": 0,
                     "started": False, "state": {"waiting": {"reason": reason, "message": message}}}
                    for c in pod["spec"]["containers"]]
        if pod["status"].get("containerStatuses") != statuses:
            self.store.update_status("pods", meta["namespace"], meta["name"],
                                     lambda obj: obj["status"].update(containerStatuses=statuses, hostIP=self.node_ip))

    def _start(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        unknown = [c["image"] for c in spec["containers"] if c["image"] not in self.images]
        if unknown:
            pulls = int(meta.get("annotations", {}).get("offline.coiled.io/pulls", "0"))
            reason = "ErrImagePull" if pulls == 0 else "ImagePullBackOff"
            message = (f'failed to pull and unpack image "{unknown[0]}": not found on the offline node'
                       if pulls == 0 else f'Back-off pulling image "{unknown[0]}"')
            self._set_waiting(pod, reason, message)
            if pulls == 0:
                self.store.update_status("pods", meta["namespace"], meta["name"], lambda obj: obj["metadata"].setdefault(
                    "annotations", {}).update({"offline.coiled.io/pulls": "1"}))
            return
        volumes = self._volume_sources(pod)
        if isinstance(volumes, str):
            self._set_waiting(pod, "ContainerCreating", volumes)
            return
        for container in spec["containers"]:
            user, non_root = _run_as(spec, container)
            where = f'(pod: "{meta["name"]}_{meta["namespace"]}({meta["uid"]})", container: {container["name"]})'
            if non_root and user is None:  # the images here run as root, as the Dask image does
                self._set_waiting(pod, "CreateContainerConfigError",
                                  f"container has runAsNonRoot and image will run as root {where}")
                return
            if non_root and user == 0:
                self._set_waiting(pod, "CreateContainerConfigError",
                                  f"container's runAsUser breaks non-root policy {where}")
                return
        pod_ip = self.pod_ips.take()
        directory = self.workdir / "pods" / meta["namespace"] / meta["name"]
        shutil.rmtree(directory, ignore_errors=True)
        (directory / "logs").mkdir(parents=True)
        (directory / "tmp").mkdir()
        token = secrets.token_urlsafe(24)
        account = spec.get("serviceAccountName") or "default"
        self.api.tokens[token] = f"system:serviceaccount:{meta['namespace']}:{account}"
        runtime = PodRuntime(meta["namespace"], meta["name"], meta["uid"], directory, pod_ip, token,
                             dict(meta.get("labels") or {}))
        mounts = self._write_volumes(pod, volumes, runtime)
        self.runtimes[meta["uid"]] = runtime
        for container in spec["containers"]:
            image = self.images[container["image"]]
            # A writable layer only for a container that runs (the call benchmark runs none) as root:
            # the image's files are root's, so a container of another user cannot write them (the
            # processes here all run as this user: the layout is what keeps them out).
            user, _ = _run_as(spec, container)
            writable = self.run_processes and not user
            prefix = container_layer(image, directory / "layers" / container["name"]) if writable else image
            env = self._environment(pod, container, runtime, mounts, prefix)
            argv = [_rewrite(a, mounts) for a in (container.get("command") or []) + (container.get("args") or [])]
            cwd = _rewrite(container.get("workingDir") or "", mounts) or str(directory)
            with open(directory / "logs" / f"{container['name']}.log", "ab") as log:
                if self.run_processes and argv:
                    try:
                        runtime.procs[container["name"]] = subprocess.Popen(
                            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)
                    except OSError as e:
                        log.write(f"exec failed: {e}\n".encode())
        ready = not any(c.get("readinessProbe") for c in spec["containers"]) or not self.run_processes
        statuses = [{"name": c["name"], "image": c["image"], "imageID": f"offline://{c['image']}", "ready": ready,
                     "restartCount": 0, "started": True, "containerID": f"offline://{meta['uid']}/{c['name']}",
                     "state": {"running": {"startedAt": now_rfc3339()}}} for c in spec["containers"]]

        def running(obj: dict) -> None:
            now = now_rfc3339()
            obj["status"].update(
                phase="Running", podIP=pod_ip, podIPs=[{"ip": pod_ip}], hostIP=self.node_ip, hostIPs=[{"ip": self.node_ip}],
                startTime=now, containerStatuses=statuses,
                conditions=[{"type": t, "status": "True" if ready or t in ("PodScheduled", "Initialized") else "False",
                             "lastTransitionTime": now} for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")])
        self.store.update_status("pods", meta["namespace"], meta["name"], running)

    def _volume_sources(self, pod: dict) -> dict[str, dict[str, bytes]] | str:
        """Each volume's files (name -> content), or why the pod cannot start yet."""
        meta, found = pod["metadata"], {}
        for volume in pod["spec"].get("volumes") or []:
            if "configMap" in volume or "secret" in volume:
                kind = "configMap" if "configMap" in volume else "secret"
                source = volume[kind]
                name = source.get("name") or source.get("secretName")
                resource = "configmaps" if kind == "configMap" else "secrets"
                objs = self.store.find(lambda res, o, n=name, wanted=resource: res == wanted and o["metadata"]["name"] == n
                                       and o["metadata"]["namespace"] == meta["namespace"])
                if not objs:
                    return f'MountVolume.SetUp failed for volume "{volume["name"]}": {kind} "{name}" not found'
                obj = objs[0][1]
                files = {k: v.encode() for k, v in (obj.get("data") or {}).items()} if kind == "configMap" else {}
                binary = obj.get("binaryData") or {} if kind == "configMap" else obj.get("data") or {}
                files.update({k: base64.b64decode(v) for k, v in binary.items()})
                if source.get("items"):
                    files = {item["path"]: files[item["key"]] for item in source["items"] if item["key"] in files}
                found[volume["name"]] = files
            else:
                found[volume["name"]] = {}  # emptyDir and anything else: an empty directory
        return found

    def _write_volumes(self, pod: dict, volumes: dict[str, dict[str, bytes]], runtime: PodRuntime) -> dict[str, str]:
        """Write the pod's volumes under its directory; mountPath -> local directory."""
        mounts: dict[str, str] = {}
        for container in pod["spec"]["containers"]:
            for mount in container.get("volumeMounts") or []:
                local = runtime.directory / "volumes" / mount["name"]
                if not local.exists():
                    local.mkdir(parents=True)
                    for path, content in volumes.get(mount["name"], {}).items():
                        target = local / path
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(content)
                        target.chmod(0o400 if "secret" in _volume(pod, mount["name"]) else 0o444)
                mounts[mount["mountPath"].rstrip("/")] = str(local)
        if pod["spec"].get("automountServiceAccountToken", True):
            account = runtime.directory / "volumes" / "kube-api-access"
            account.mkdir(parents=True, exist_ok=True)
            (account / "token").write_text(runtime.token)
            (account / "ca.crt").write_text(self.ca_pem)
            (account / "namespace").write_text(runtime.namespace)
            mounts[SERVICE_ACCOUNT_DIR] = str(account)
        return mounts

    def _environment(self, pod: dict, container: dict, runtime: PodRuntime, mounts: dict[str, str],
                     image_env: str) -> dict[str, str]:
        env = {k: os.environ[k] for k in _INHERIT_ENV if k in os.environ}
        env.update(PATH=f"{image_env}/bin:{_SYSTEM_PATH}", HOSTNAME=runtime.name, TMPDIR=str(runtime.directory / "tmp"),
                   KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT=str(self.api_port),
                   COILED_NODE_HOST=loopback_address(runtime.pod_ip), DASK_COILED__LOOPBACK_ADDRESSES="true",
                   VIRTUAL_ENV=image_env)
        fields = {"metadata.name": runtime.name, "metadata.namespace": runtime.namespace, "metadata.uid": runtime.uid,
                  "status.podIP": runtime.pod_ip, "status.hostIP": self.node_ip, "spec.nodeName": NODE_NAME,
                  "spec.serviceAccountName": pod["spec"].get("serviceAccountName") or "default"}
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = _rewrite(item["value"], mounts)
            elif "fieldRef" in (item.get("valueFrom") or {}):
                env[item["name"]] = fields.get(item["valueFrom"]["fieldRef"]["fieldPath"], "")
        env[MARK_ENV] = f"{self.mark}:{runtime.uid}"
        return env

    # -- running and ending ----------------------------------------------------------------
    def _watch(self, pod: dict, runtime: PodRuntime) -> None:
        meta, status = pod["metadata"], pod["status"]
        if runtime.ended:
            return
        deadline = pod["spec"].get("activeDeadlineSeconds")
        if deadline and time.time() - runtime.started > deadline:
            runtime.ended = True
            threading.Thread(target=self._kill_runtime, args=(runtime, 0), daemon=True).start()
            self.store.update_status("pods", meta["namespace"], meta["name"], lambda obj: obj["status"].update(
                phase="Failed", reason="DeadlineExceeded",
                message=f"Pod was active on the node longer than the specified deadline ({deadline}s)"))
            return
        if not _is_ready(pod):
            self._probe(pod, runtime)
        codes = {name: proc.poll() for name, proc in runtime.procs.items()}
        if not self.run_processes or any(code is None for code in codes.values()):
            return
        runtime.ended = True
        failed = any(code != 0 for code in codes.values())
        statuses = []
        for previous in status.get("containerStatuses") or []:
            code = codes.get(previous["name"], 0)
            started = (previous.get("state") or {}).get("running", {}).get("startedAt", now_rfc3339())
            statuses.append({**previous, "ready": False, "started": False, "state": {"terminated": {
                "exitCode": code, "reason": "Completed" if code == 0 else "Error",
                "startedAt": started, "finishedAt": now_rfc3339()}}})

        def ended(obj: dict) -> None:
            obj["status"].update(phase="Failed" if failed else "Succeeded", containerStatuses=statuses)
            for condition in obj["status"].get("conditions") or []:
                if condition["type"] in ("Ready", "ContainersReady"):
                    condition.update(status="False", reason="PodCompleted")
        self.store.update_status("pods", meta["namespace"], meta["name"], ended)
        threading.Thread(target=self._kill_runtime, args=(runtime, 0), daemon=True).start()  # what it left

    def _probe(self, pod: dict, runtime: PodRuntime) -> None:
        """Run the containers' tcpSocket readiness probes; mark the pod Ready once all pass
        (a pod that was ready stays so: failing probes later are not modelled)."""
        for container in pod["spec"]["containers"]:
            probe = (container.get("readinessProbe") or {}).get("tcpSocket")
            if probe is None:
                continue
            port = probe["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port)
            try:
                socket.create_connection((loopback_address(runtime.pod_ip), int(port)), timeout=0.2).close()
            except OSError:
                return
        meta = pod["metadata"]

        def ready(obj: dict) -> None:
            for condition in obj["status"].get("conditions") or []:
                if condition["type"] in ("Ready", "ContainersReady"):
                    condition.update(status="True", lastTransitionTime=now_rfc3339())
            for status in obj["status"].get("containerStatuses") or []:
                status["ready"] = True
        self.store.update_status("pods", meta["namespace"], meta["name"], ready)

    def _terminate(self, pod: dict) -> None:
        meta = pod["metadata"]
        runtime = self.runtimes.get(meta["uid"])
        if runtime is None:
            self.store.remove("pods", meta["namespace"], meta["name"])
            return
        if runtime.terminating:
            return
        runtime.terminating = True
        grace = meta.get("deletionGracePeriodSeconds", 30)

        def finish() -> None:
            self._kill_runtime(runtime, grace)
            self.runtimes.pop(runtime.uid, None)
            self.store.remove("pods", runtime.namespace, runtime.name)
        threading.Thread(target=finish, daemon=True).start()

    def _kill_runtime(self, runtime: PodRuntime, grace: float) -> None:
        """End a pod as a container runtime does: SIGTERM to each container's main process, SIGKILL
        to it after ``grace`` seconds, then SIGKILL to everything else the pod started."""
        procs = []
        for proc in runtime.procs.values():
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(proc.pid))
        kill_processes(procs, grace)
        rest = marked_processes(f"{self.mark}:{runtime.uid}")
        for proc in rest:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(rest, timeout=5)
        for proc in runtime.procs.values():
            with contextlib.suppress(Exception):
                proc.wait(1)  # reap
        with contextlib.suppress(ProcessLookupError, PermissionError):
            for proc in runtime.procs.values():
                os.killpg(proc.pid, signal.SIGKILL)
        if runtime.uid not in self.runtimes or runtime.terminating:
            self.api.tokens.pop(runtime.token, None)
            self.pod_ips.give_back(runtime.pod_ip)

    # -- services --------------------------------------------------------------------------
    def _endpoints(self, service: dict, port: dict) -> list[tuple[str, int]]:
        selector = service["spec"].get("selector") or {}
        if not selector:
            return []
        ns = service["metadata"]["namespace"]
        found = []
        for _, pod in self.store.find(lambda res, o: res == "pods" and o["metadata"]["namespace"] == ns):
            labels = pod["metadata"].get("labels") or {}
            if any(labels.get(k) != v for k, v in selector.items()) or pod["metadata"].get("deletionTimestamp"):
                continue
            if pod["status"].get("phase") != "Running" or not pod["status"].get("podIP") or not _is_ready(pod):
                continue
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                named = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []
                         if p.get("name") == target]
                if not named:
                    continue
                target = named[0]
            found.append((loopback_address(pod["status"]["podIP"]), int(target)))
        return found


def _run_as(spec: dict, container: dict) -> tuple[int | None, bool]:
    """The user a container runs as (None: the image's, root here) and whether it must not be root."""
    pod_context, context = spec.get("securityContext") or {}, container.get("securityContext") or {}
    user = context.get("runAsUser", pod_context.get("runAsUser"))
    non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
    return user, bool(non_root)


def _is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def _volume(pod: dict, name: str) -> dict:
    return next((v for v in pod["spec"].get("volumes") or [] if v["name"] == name), {})


def _rewrite(value: str, mounts: dict[str, str]) -> str:
    """A mounted path (or a ``:``-separated list of them) as the local path the pod's files are at."""
    def one(path: str) -> str:
        for mount, local in mounts.items():
            if path == mount or path.startswith(mount + "/"):
                return local + path[len(mount):]
        return path
    return ":".join(one(part) for part in value.split(":")) if value.startswith("/") else value
