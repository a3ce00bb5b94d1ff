"""Offline Kubernetes: an API server fake and a one-node cluster that runs pods as local processes.

No kube-apiserver can run where this project is built, so the k8s backend is tested against this
stand-in, with the real ``kubernetes`` client (whose models validate every reply):

* :mod:`.store` keeps the objects with the server's rules (names, versions, 409/404/410/422,
  deletion with propagation policies and preconditions, owner-reference garbage collection);
* :mod:`.api` serves them over HTTPS on ``127.0.0.1`` (a free port), with bearer tokens, RBAC
  for service accounts, recorded calls and injected faults;
* :mod:`.schemas` holds every stored object to the official OpenAPI schemas (the oldest and the
  newest Kubernetes the backend supports), and :mod:`.podsecurity` enforces Pod Security
  admission in namespaces labelled ``pod-security.kubernetes.io/enforce``
  (:meth:`OfflineKubernetes.create_namespace`);
* :mod:`.kubelet` schedules pods on the one node and runs their containers as processes;
* :mod:`.network` gives pods and Services addresses and proxies Service ports;
* :mod:`.images` maps the Dask image to a local Python environment.

Usage::

    with OfflineKubernetes(workdir) as cluster:
        kubeconfig = cluster.kubeconfig          # a file: server, CA and the administrator's token
        ...                                      # coiled.Cluster(backend="k8s", backend_options={"kubeconfig": kubeconfig})

Loopback mode (``coiled.loopback-addresses``) must be on in the client so that the private
addresses of pods and Services are mapped to the loopback ones the fake uses.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import random
import ssl
import tempfile
from pathlib import Path
from typing import Any

from coiled_k8s.offline.api import ADMIN, SUPERUSER, ApiServer
from coiled_k8s.offline.images import dask_image_environment
from coiled_k8s.offline.kubelet import OfflineNode
from coiled_k8s.offline.network import (
    LOAD_BALANCER_NETWORK,
    SERVICE_NETWORK,
    AddressPool,
)
from coiled_k8s.offline.store import ObjectStore

__all__ = ["OfflineKubernetes"]


def _self_signed(host: str) -> tuple[str, str]:
    """A CA-less self-signed certificate for ``host`` (an IP address) and its key, as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "offline-kube-apiserver")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


class OfflineKubernetes:
    """The API server fake and its node, started and stopped together.

    Parameters:
        workdir: where pods run and the kubeconfig is written (a temporary directory if None).
        admin_rules: RBAC rules the administrator's token is held to (None: everything allowed).
        max_pods, cpu, memory, gpus: what the node offers (pods beyond it are Unschedulable).
        run_processes: False runs no container at all (pods still go Running): for counting calls.
        images: more image names the node knows, each mapped to a Python environment's prefix.
    """

    def __init__(self, workdir: str | Path | None = None, *, admin_rules: list[dict] | None = None,
                 max_pods: int = 110, cpu: str = "64", memory: str = "256Gi", gpus: int = 0,
                 run_processes: bool = True, images: dict[str, str] | None = None, namespace: str = "default"):
        from coiled_k8s.options import default_image

        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="offline-k8s-"))
        self.namespace = namespace
        self.store = ObjectStore()
        for name in {"default", "kube-system", namespace}:  # as a new cluster has them
            self.create_namespace(name)
        self.ca_pem, key_pem = _self_signed("127.0.0.1")
        (self.workdir / "tls").mkdir(parents=True, exist_ok=True)
        (self.workdir / "tls" / "server.pem").write_text(self.ca_pem)
        (self.workdir / "tls" / "server-key.pem").write_text(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.workdir / "tls" / "server.pem", self.workdir / "tls" / "server-key.pem")
        self.admin_token = base64.urlsafe_b64encode(random.randbytes(24)).decode()
        self.service_ips = AddressPool(SERVICE_NETWORK)
        self.balancer_ips = AddressPool(LOAD_BALANCER_NETWORK)
        defaults = {"pods": self._pod_defaults, "services": self._service_defaults, "secrets": self._secret_defaults,
                    "namespaces": _namespace_defaults}
        self.api = ApiServer(self.store, context, self.admin_token, defaults, self._logs, admin_rules)
        self.superuser_token = base64.urlsafe_b64encode(random.randbytes(24)).decode()
        self.api.tokens[self.superuser_token] = SUPERUSER
        environment = dask_image_environment(self.workdir / "images" / "dask")
        self.images = {default_image(): environment, **(images or {})}
        self.node = OfflineNode(self.store, self.api, self.workdir, self.images, self.api.port, self.ca_pem,
                                cpu=cpu, memory=memory, gpus=gpus, max_pods=max_pods, run_processes=run_processes)
        self.kubeconfig = str(self.workdir / "kubeconfig")
        self._write_kubeconfig()

    # -- life ------------------------------------------------------------------------------
    def start(self) -> OfflineKubernetes:
        self.api.start()
        self.node.start()
        return self

    def stop(self) -> None:
        self.node.stop()
        self.api.stop()

    def __enter__(self) -> OfflineKubernetes:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api.port}"

    def _write_kubeconfig(self) -> None:
        import yaml

        ca = base64.b64encode(self.ca_pem.encode()).decode()
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "offline",
            "clusters": [{"name": "offline", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": ADMIN, "user": {"token": self.admin_token}}],
            "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": ADMIN,
                                                         "namespace": self.namespace}}],
        }
        Path(self.kubeconfig).write_text(yaml.safe_dump(config))
        Path(self.kubeconfig).chmod(0o600)

    def api_client(self, superuser: bool = False) -> Any:
        """A kubernetes ``ApiClient`` of the administrator (held to ``admin_rules``) or of a user
        no rule holds back."""
        from kubernetes import config

        path = self.kubeconfig
        if superuser:
            path = str(self.workdir / "kubeconfig-superuser")
            if not Path(path).exists():
                text = Path(self.kubeconfig).read_text().replace(self.admin_token, self.superuser_token)
                Path(path).write_text(text)
        return config.new_client_from_config(path)

    # -- namespaces ------------------------------------------------------------------------
    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> dict:
        """Make namespace ``name`` (with ``labels``, e.g. ``pod-security.kubernetes.io/enforce``),
        or set those labels on it if it exists; return it."""
        from coiled_k8s.offline.store import ApiError

        try:
            return self.store.create("namespaces", "Namespace", "v1", "", {"metadata": {
                "name": name, "labels": dict(labels or {})}}, _namespace_defaults)
        except ApiError as e:
            if e.code != 409:
                raise
        return self.store.patch("namespaces", "", name, "application/merge-patch+json",
                                {"metadata": {"labels": labels or {}}})

    # -- what the fake reads for tests -----------------------------------------------------
    def objects(self, namespace: str | None = None, label_selector: str | None = None) -> list[tuple[str, dict]]:
        """(resource, object) of every object (in ``namespace``, matching ``label_selector``)."""
        from coiled_k8s.offline.store import parse_selector

        predicates = parse_selector(label_selector)
        return self.store.find(lambda res, o: (namespace is None or o["metadata"].get("namespace") == namespace)
                               and all(p(o["metadata"].get("labels") or {}) for p in predicates))

    def inject(self, verb: str, resource: str, code: int, times: int = 1) -> None:
        """Answer the next ``times`` administrator requests ``verb`` on ``resource`` with ``code``."""
        self.api.inject(verb, resource, code, times)

    def clear_faults(self) -> None:
        """Forget the injected faults not yet used."""
        self.api.clear_faults()

    # -- server-side defaults --------------------------------------------------------------
    def _pod_defaults(self, pod: dict) -> None:
        spec = pod.setdefault("spec", {})
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
        for container in spec.get("containers") or []:
            container.setdefault("imagePullPolicy", "IfNotPresent")
            container.setdefault("terminationMessagePath", "/dev/termination-log")
        pod["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}

    def _service_defaults(self, service: dict) -> None:
        spec = service.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec.get("clusterIP") != "None":
            spec["clusterIP"] = self.service_ips.take()
        spec["clusterIPs"] = [spec["clusterIP"]]
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port["port"])
            if spec["type"] in ("NodePort", "LoadBalancer"):
                port.setdefault("nodePort", random.randrange(30000, 32768))
        ingress = [{"ip": self.balancer_ips.take(), "ipMode": "VIP"}] if spec["type"] == "LoadBalancer" else []
        service["status"] = {"loadBalancer": {"ingress": ingress} if ingress else {}}

    def _secret_defaults(self, secret: dict) -> None:
        secret.setdefault("type", "Opaque")
        data = secret.setdefault("data", {})
        for key, value in (secret.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(value.encode()).decode()

    # -- pods/log --------------------------------------------------------------------------
    def _logs(self, namespace: str, name: str, query: dict[str, Any]) -> str:
        from coiled_k8s.offline.store import ApiError

        pod = self.store.get("pods", namespace, name)
        container = query.get("container") or pod["spec"]["containers"][0]["name"]
        path = self.workdir / "pods" / namespace / name / "logs" / f"{container}.log"
        if not path.exists():
            waiting = next((s["state"].get("waiting") for s in pod["status"].get("containerStatuses") or []
                            if s["name"] == container and "waiting" in s.get("state", {})), None)
            why = waiting["reason"] if waiting else "ContainerCreating"
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: {why}')
        lines = path.read_text(errors="replace").splitlines(keepends=True)
        if query.get("tailLines"):
            lines = lines[-int(query["tailLines"]):] if int(query["tailLines"]) else []
        return "".join(lines)


def _namespace_defaults(namespace: dict) -> None:
    meta = namespace["metadata"]
    # The label the API server sets on every namespace (since 1.21), for selecting one by name.
    meta["labels"] = {**(meta.get("labels") or {}), "kubernetes.io/metadata.name": meta["name"]}
    namespace.update(spec={"finalizers": ["kubernetes"]}, status={"phase": "Active"})


def _qos_class(spec: dict) -> str:
    resources = [c.get("resources") or {} for c in spec.get("containers") or []]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(r.get("limits") and all(r.get("limits", {}).get(k) == v for k, v in (r.get("requests") or {}).items())
                     and {"cpu", "memory"} <= set(r.get("limits", {})) for r in resources)
    return "Guaranteed" if guaranteed else "Burstable"
