"""Offline Compute Engine: the REST paths the ``gcp`` backend uses, served on 127.0.0.1, plus a
runner that boots each instance's ``startup-script`` as local processes.

There is no Compute Engine emulator, so :class:`OfflineGCP` serves, on one port:

* Compute Engine v1 (``/compute/v1/projects/P/...``): instances (insert, bulkInsert, get,
  list, aggregatedList, delete), firewalls, addresses, machine types, regions, and zone, region
  and global operations (get and wait). It keeps the real API's traps: int64 fields (``id``,
  machine types' ``memoryMb``... are int32 and stay numbers) as JSON strings, list filters on
  ``labels.KEY = VALUE`` and ``name``, paging with ``maxResults``/``nextPageToken``, and errors of
  mutations as an operation that is ``DONE`` with ``error.errors[].code`` and
  ``httpErrorStatusCode`` (a 200 reply: the client sees them only if it reads the operation).
* Cloud Storage JSON API (buckets and objects, ``ifGenerationMatch`` preconditions: 412).
* Secret Manager v1 (secrets, versions, ``:access``, label filters).
* Networks and subnetworks (get, and list of a region's subnetworks): the project's ``default``
  network (auto mode) unless ``default_network=False``, and those :meth:`OfflineGCP.add_network`
  adds; instances, firewall rules and internal addresses must name ones that exist and agree.
* IAM v1 service accounts (create, get, delete) and custom roles (create, get); the IAM
  policies of single instances, secrets and buckets (get, set; a bucket's with its etag).
* Cloud Resource Manager v1 ``projects.get`` (the project's number, which owns its buckets:
  :meth:`OfflineGCP.add_bucket` makes one of another project's, as a name sniper would).

Every request is checked against Google's discovery documents, and refused as the service
refuses it (:mod:`coiled_gcp.offline_api`; :attr:`OfflineGCP.refused`); every reply is checked
against the method's response schema (:attr:`OfflineGCP.drift`, a 500 when it does not match).

Requests must carry ``Authorization: Bearer <token>`` (every user of the machine reaches the
port, and what the runner boots runs as its owner): :attr:`OfflineGCP.token`, the client's, may do
everything (the project's owner); a service account's token (:meth:`OfflineGCP.account_token`,
what an instance's metadata server hands its machine) may do only what IAM grants the account,
as Google decides it (:mod:`coiled_gcp.offline_iam`): the project's policy
(:meth:`OfflineGCP.grant_project`) and the policy of the one instance, secret or bucket a request
acts on, with custom roles, the predefined storage roles and conditions on resource names.
Anything else is refused with 403 (:attr:`OfflineGCP.denied`).

**The runner.** An instance inserted with a ``startup-script`` metadata item is started at once
(status ``RUNNING``) as a local process (:mod:`coiled_core.testing.noderunner`) on its own
loopback address (``10.B.x.y`` -> ``127.B.x.y``; ``127.B.0.0/16`` is a block this run holds alone,
:class:`coiled_core.testing.noderunner.LoopbackBlock`), with ``COILED_OFFLINE=1``,
``COILED_INSTANCE_ID`` (the instance's name, as GCE's metadata server reports it),
``COILED_NODE_HOST``, ``COILED_NODE_ROOT``, the endpoint of this server and the token of the
instance's service account (``serviceAccounts[0].email``; none without one), never the
client's. Deleting
the instance kills its processes (SIGTERM, then SIGKILL after ``kill_grace``) before the delete
answers, as a Compute Engine delete is done once the machine has shut down. When the script exits (the machine's power-off), the instance
is deleted: the backend's power-off deletes the instance (see :mod:`coiled_gcp.bootstrap`).
The stand-in touches only the machines it started: a watchdog process of its own
(:func:`coiled_core.testing.noderunner.start_watchdog`) ends them if this process dies without
:meth:`OfflineGCP.stop` (say, a test run killed with SIGKILL); other runs' machines on the same
computer are never its business.

**Faults.** :meth:`OfflineGCP.exhaust` makes inserts of a zone and/or machine type fail with
``ZONE_RESOURCE_POOL_EXHAUSTED`` or ``QUOTA_EXCEEDED`` (as a DONE operation with an error);
:meth:`OfflineGCP.fail` makes the next matching request fail with an HTTP error.
``capacity`` caps the instances running at once (``ZONE_RESOURCE_POOL_EXHAUSTED`` past it).
``run_scripts=False`` serves the API only, and :attr:`OfflineGCP.calls` counts requests.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from coiled_core.testing import noderunner
from coiled_core.testing.standin import StandInProof
from coiled_gcp import offline_api, offline_iam

logger = logging.getLogger(__name__)

ZONES = {"us-east1": ["us-east1-b", "us-east1-c", "us-east1-d"], "us-central1": ["us-central1-a", "us-central1-b"]}

#: (name, vCPUs, memory MiB, accelerators) of the fake's catalogue; e2/n2/n2d/t2a/n1/g2 families.
MACHINE_TYPES: list[tuple[str, int, int, list[dict]]] = [
    ("e2-small", 2, 2048, []),
    ("e2-medium", 2, 4096, []),
    ("e2-standard-2", 2, 8192, []),
    ("e2-standard-4", 4, 16384, []),
    ("e2-standard-8", 8, 32768, []),
    ("e2-highmem-2", 2, 16384, []),
    ("n2-standard-2", 2, 8192, []),
    ("n2-standard-4", 4, 16384, []),
    ("n2-standard-8", 8, 32768, []),
    ("n2-standard-16", 16, 65536, []),
    ("n2-highmem-4", 4, 32768, []),
    ("n2-highcpu-8", 8, 8192, []),
    ("t2a-standard-2", 2, 8192, []),
    ("t2a-standard-4", 4, 16384, []),
    ("n1-standard-4", 4, 15360, []),
    ("n1-standard-8", 8, 30720, []),
    ("g2-standard-4", 4, 16384, [{"guestAcceleratorType": "nvidia-l4", "guestAcceleratorCount": 1}]),
    ("a2-highgpu-1g", 12, 87040, [{"guestAcceleratorType": "nvidia-tesla-a100", "guestAcceleratorCount": 1}]),
]


#: Second octets of the loopback blocks a stand-in may take: not 127.0 (servers, 127.0.0.1),
#: 127.31 (moto's default VPC, 172.31) nor 127.96-127.191 (the offline Kubernetes' networks).
LOOPBACK_OCTETS = [b for b in range(1, 96) if b != 31]


class _Fault(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass
class _Machine:
    name: str
    zone: str
    directory: Path
    popen: Any = None
    status: str = "running"


@dataclass
class _State:
    instances: dict[tuple[str, str], dict] = field(default_factory=dict)  # (zone, name)
    firewalls: dict[str, dict] = field(default_factory=dict)
    addresses: dict[tuple[str, str], dict] = field(default_factory=dict)  # (region, name)
    operations: dict[str, dict] = field(default_factory=dict)
    buckets: dict[str, dict] = field(default_factory=dict)
    objects: dict[tuple[str, str], dict] = field(default_factory=dict)  # (bucket, name) -> meta + data
    secrets: dict[str, dict] = field(default_factory=dict)  # full name -> secret + versions
    networks: dict[str, dict] = field(default_factory=dict)  # name -> network
    subnetworks: dict[tuple[str, str], dict] = field(default_factory=dict)  # (region, name)
    service_accounts: dict[str, dict] = field(default_factory=dict)  # email -> account
    roles: dict[str, dict] = field(default_factory=dict)  # full name -> custom role
    #: IAM policies of single resources: "instances/ZONE/NAME", "secrets/NAME", "buckets/NAME".
    policies: dict[str, dict] = field(default_factory=dict)


class OfflineGCP:
    """A local stand-in for Compute Engine, Cloud Storage and Secret Manager (see the module).

    Parameters:
        project: the one project it serves.
        run_scripts: False serves the API only (no instance boots), e.g. to count calls.
        capacity: most instances running at once (None: no limit).
        workdir: instance directories and logs (default: a new temporary directory).
        env_cache: ``COILED_ENV_CACHE`` shared by instances (False: none).
        kill_grace: seconds between SIGTERM and SIGKILL when an instance is deleted.
        default_network: False: a project without the ``default`` network (add one with
            :meth:`add_network`).
    """

    def __init__(
        self,
        project: str = "offline-project",
        *,
        run_scripts: bool = True,
        capacity: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        env_cache: str | os.PathLike[str] | bool | None = None,
        kill_grace: float = 3.0,
        default_network: bool = True,
    ) -> None:
        self.project = project
        #: The project's number (Cloud Resource Manager's ``projectNumber``, buckets' owner).
        self.project_number = str(10**11 + secrets.randbelow(9 * 10**11))
        self.run_scripts = run_scripts
        self.capacity = capacity
        self.kill_grace = kill_grace
        self.token = secrets.token_urlsafe(24)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="coiled-offline-gce-"))
        self.env_cache = None if env_cache is False else Path(env_cache) if env_cache not in (None, True) else self.workdir / "env-cache"
        #: Requests served, by "METHOD /path-pattern".
        self.calls: dict[str, int] = {}
        #: Messages, one per refused or failed instance.
        self.errors: list[str] = []
        #: Requests refused by the discovery documents' rules (method id: message).
        self.refused: list[str] = []
        #: Replies of the stand-in its discovery documents do not describe (a bug of the stand-in).
        self.drift: list[str] = []
        #: Requests of service accounts that IAM refused ("EMAIL: permission on resource").
        self.denied: list[str] = []
        self._account_tokens: dict[str, str] = {}  # token -> service account email
        self.state = _State()
        self._exhausted: list[tuple[str | None, str | None, str, bool]] = []
        self._faults: list[tuple[str, str, int, str]] = []
        self._lock = threading.RLock()
        if default_network:
            self.add_network("default")
        self._machines: dict[str, _Machine] = {}
        self._ids = itertools.count(10**18 + secrets.randbelow(10**17))
        self._ips = itertools.count(2)
        self._marker = ""
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._watchdog: Any = None
        self._proof: StandInProof | None = None
        self._block: noderunner.LoopbackBlock | None = None
        self._stopping = threading.Event()

    # -- life ---------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        assert self._server is not None, "OfflineGCP is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def environ(self) -> dict[str, str]:
        """Variables pointing the ``gcp`` backend (and a child process) at this server."""
        return {
            "COILED_GCP_ENDPOINT": self.endpoint,
            "COILED_GCP_TOKEN": self.token,
            "GOOGLE_CLOUD_PROJECT": self.project,
            "DASK_COILED__LOOPBACK_ADDRESSES": "true",
            # The switches above are honoured only while this proof says a stand-in runs.
            **self._proof.environ(),
        }

    def start(self) -> OfflineGCP:
        self._proof = StandInProof().create()
        self._marker = noderunner.new_marker()
        # Addresses of this run alone: 10.B.x.y, whose nodes bind 127.B.x.y (B: a free block).
        self._block = noderunner.LoopbackBlock(LOOPBACK_OCTETS)
        self._ips = itertools.count(2)
        # Machines of this run end with it, even if it is killed before stop().
        self._watchdog = noderunner.start_watchdog(self._marker, self.kill_grace)
        self._bin = noderunner.prepare_bin(self.workdir / "bin")
        if self.env_cache is not None:
            self.env_cache.mkdir(parents=True, exist_ok=True)
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="offline-gce", daemon=True)
        self._thread.start()
        self._stopping.clear()
        self._watcher = threading.Thread(target=self._watch, name="offline-gce-runner", daemon=True)
        self._watcher.start()
        return self

    def stop(self) -> None:
        """Kill every process started, stop serving. Idempotent."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self._marker:
            noderunner.kill_marked(self._marker, grace=self.kill_grace)
        if self._watchdog is not None:
            self._watchdog.terminate()
            self._watchdog.wait(10)
            self._watchdog = None
        with self._lock:
            for machine in self._machines.values():
                if machine.popen is not None:
                    machine.popen.poll()
            self._machines.clear()
        if self._proof is not None:
            self._proof.remove()
            self._proof = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._block is not None:
            self._block.release()
            self._block = None

    def __enter__(self) -> OfflineGCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults -------------------------------------------------------------------------------
    def exhaust(
        self, zone: str | None = None, machine_type: str | None = None, code: str = "ZONE_RESOURCE_POOL_EXHAUSTED", spot_only: bool = False
    ) -> None:
        """Inserts in ``zone`` (any, if None) of ``machine_type`` (any) fail with ``code``
        (only Spot ones with ``spot_only``)."""
        with self._lock:
            self._exhausted.append((zone, machine_type, code, spot_only))

    def fail(self, method: str, path_pattern: str, status: int = 500, reason: str = "backendError") -> None:
        """The next request whose method is ``method`` and path matches ``path_pattern`` fails."""
        with self._lock:
            self._faults.append((method, path_pattern, status, reason))

    def clear_faults(self) -> None:
        with self._lock:
            self._exhausted.clear()
            self._faults.clear()

    def add_network(self, name: str, subnetworks: dict[str, str] | None = None) -> None:
        """A VPC network: auto mode (one subnetwork named ``name`` per region) unless
        ``subnetworks`` ({region: subnetwork name}) makes it a custom-mode one."""
        auto = subnetworks is None
        with self._lock:
            self.state.networks[name] = {"name": name, "autoCreateSubnetworks": auto}
            for n, (region, subnetwork) in enumerate(({r: name for r in ZONES} if auto else subnetworks).items()):
                cidr = f"10.{128 + len(self.state.subnetworks) % 100}.{n}.0/24"
                self.state.subnetworks[(region, subnetwork)] = {"name": subnetwork, "network": name, "ipCidrRange": cidr}
    def add_bucket(self, name: str, project_number: str | None = None, readable: bool = True) -> None:
        """A bucket as another project may have made it: owned by ``project_number`` (this
        project's by default); ``readable=False``: this project's credentials may not read it."""
        with self._lock:
            self.state.buckets[name] = {"name": name, "projectNumber": project_number or self.project_number, "id": name, "_readable": readable}

    def account_token(self, email: str) -> str:
        """The access token of service account ``email``, as an instance's metadata server hands
        it to the machine: requests made with it may do only what IAM grants the account."""
        with self._lock:
            token = next((t for t, e in self._account_tokens.items() if e == email), None)
            if token is None:
                token = secrets.token_urlsafe(24)
                self._account_tokens[token] = email
            return token

    def grant_project(self, member: str, role: str) -> None:
        """Bind ``role`` to ``member`` (``serviceAccount:EMAIL``) in the project's own policy: what
        a user does for an account of their own (``roles/owner``: everything)."""
        with self._lock:
            policy = self.state.policies.setdefault(f"projects/{self.project}", {"version": 1, "bindings": [], "etag": _etag()})
            binding = next((b for b in policy["bindings"] if b["role"] == role and "condition" not in b), None)
            if binding is None:
                policy["bindings"].append({"role": role, "members": [member]})
            elif member not in binding["members"]:
                binding["members"].append(member)

    def _authorize(self, email: str, api: offline_api.Route, query: dict[str, str]) -> None:
        """Raise the service's 403 unless IAM grants ``email`` what ``api`` needs."""
        member = f"serviceAccount:{email}"
        with self._lock:
            what = offline_iam.need(api, self.project, query, lambda bucket, name: (bucket, name) in self.state.objects)
            policies = [self.state.policies.get(f"projects/{self.project}", {})]
            if what.policy:
                policies.append(self.state.policies.get(what.policy, {}))
            for permission in what.permissions:
                if not offline_iam.allowed(member, permission, what.resource, policies, self.state.roles):
                    self.denied.append(f"{email}: {permission} on {what.resource}")
                    raise offline_iam.denial(email, permission, what)

    def instance_names(self) -> list[str]:
        with self._lock:
            return sorted(name for _, name in self.state.instances)

    def machine_pid(self, name: str) -> int | None:
        with self._lock:
            machine = self._machines.get(name)
            return machine.popen.pid if machine and machine.popen else None

    # -- runner -------------------------------------------------------------------------------
    def _boot(self, instance: dict) -> None:
        name = instance["name"]
        script = next((i["value"] for i in instance.get("metadata", {}).get("items", []) if i["key"] == "startup-script"), None)
        if not self.run_scripts or not script:
            return
        ip = instance["networkInterfaces"][0]["networkIP"]
        directory = self.workdir / name
        extra = {**self.environ(), **({"COILED_ENV_CACHE": str(self.env_cache)} if self.env_cache else {})}
        # The machine holds its service account's token (a real one asks the metadata server),
        # never the client's; without an account it holds none.
        account = next(iter(instance.get("serviceAccounts") or []), {}).get("email")
        extra.pop("COILED_GCP_TOKEN")
        if account:
            extra["COILED_GCP_TOKEN"] = self.account_token(account)
        env = noderunner.machine_environ(self._marker, name, directory, noderunner_host(ip), self._bin, extra)
        machine = _Machine(name, _last(instance["zone"]), directory)
        machine.popen = noderunner.start_machine(script, directory, env)
        self._machines[name] = machine

    def _watch(self) -> None:
        """A machine whose script exited is powered off: its processes go, its instance too."""
        while not self._stopping.wait(0.2):
            with self._lock:
                ended = [m for m in self._machines.values() if m.popen.poll() is not None or (m.directory / "poweroff").exists()]
                for machine in ended:
                    del self._machines[machine.name]
                    self.state.instances.pop((machine.zone, machine.name), None)
            for machine in ended:
                threading.Thread(target=noderunner.kill_marked, args=(self._marker, machine.name, self.kill_grace), daemon=True).start()

    def _kill(self, name: str) -> None:
        with self._lock:
            machine = self._machines.pop(name, None)
        if machine is not None:
            noderunner.kill_marked(self._marker, name, self.kill_grace)
            machine.popen.poll()

    # -- compute ------------------------------------------------------------------------------
    def _operation(self, scope: str, where: str, kind: str, target: str, error: tuple[int, str, str] | None = None) -> dict:
        name = f"operation-{int(time.time() * 1000)}-{secrets.token_hex(6)}"
        base = f"{self.endpoint}/compute/v1/projects/{self.project}"
        op: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(next(self._ids)),  # int64: a JSON string
            "name": name,
            "operationType": kind,
            "targetLink": target,
            "status": "DONE",
            "progress": 100,
            "insertTime": _now(),
            "selfLink": f"{base}/{scope}/{where}/operations/{name}" if scope != "global" else f"{base}/global/operations/{name}",
        }
        if scope == "zones":
            op["zone"] = f"{base}/zones/{where}"
        elif scope == "regions":
            op["region"] = f"{base}/regions/{where}"
        if error is not None:
            status, code, message = error
            op["httpErrorStatusCode"] = status
            op["httpErrorMessage"] = "SERVICE UNAVAILABLE" if status == 503 else "FORBIDDEN" if status == 403 else "ERROR"
            op["error"] = {"errors": [{"code": code, "message": message}]}
        self.state.operations[name] = op
        return op

    def _insert_error(self, zone: str, body: dict) -> tuple[int, str, str] | None:
        machine_type = _last(body.get("machineType", ""))
        spot = body.get("scheduling", {}).get("provisioningModel") == "SPOT"
        for z, t, code, spot_only in self._exhausted:
            if z in (None, zone) and t in (None, machine_type) and (spot or not spot_only):
                if code == "QUOTA_EXCEEDED":
                    return 403, code, f"Quota 'CPUS' exceeded in region {zone.rsplit('-', 1)[0]}."
                return 503, code, f"The zone 'projects/{self.project}/zones/{zone}' does not have enough resources available to fulfill the request."
        running = sum(1 for _ in self.state.instances)
        if self.capacity is not None and running >= self.capacity:
            return 503, "ZONE_RESOURCE_POOL_EXHAUSTED", f"offline capacity of {self.capacity} instances reached"
        return None

    def _new_instance(self, zone: str, body: dict) -> dict:
        machine_type = _last(body.get("machineType", ""))
        if not any(t[0] == machine_type for t in MACHINE_TYPES) and not re.fullmatch(r"[a-z0-9]+-custom-\d+-\d+", machine_type):
            raise _Fault(400, "invalid", f"Invalid value for field 'resource.machineType': '{body.get('machineType')}'.")
        interfaces = [self._interface(zone, i, interface) for i, interface in enumerate(body.get("networkInterfaces") or [{}])]
        ip = interfaces[0].get("networkIP") or self._next_ip()
        base = f"{self.endpoint}/compute/v1/projects/{self.project}/zones/{zone}"
        # What the service returns: full URLs of what the request named, in either form.
        body = {**body, "machineType": f"{base}/machineTypes/{machine_type}"}
        if body.get("guestAccelerators"):
            body["guestAccelerators"] = [{**a, "acceleratorType": f"{base}/acceleratorTypes/{_last(a.get('acceleratorType', ''))}"} for a in body["guestAccelerators"]]
        instance = {
            **body,
            "kind": "compute#instance",
            "id": str(next(self._ids)),
            "zone": base,
            "status": "RUNNING",
            "creationTimestamp": _now(),
            "selfLink": f"{base}/instances/{body['name']}",
            "networkInterfaces": [{**interfaces[0], "networkIP": ip, "name": "nic0"}, *interfaces[1:]],
        }
        return instance

    def _network(self, url: str | None, field_name: str) -> str:
        """The name of the network ``url`` names (the default one if None); 400 if there is none."""
        name = _last(url) if url else "default"
        if name not in self.state.networks:
            what = f"'{url}'" if url else "the default network global/networks/default (this project has none: name a network or subnetwork)"
            raise _Fault(400, "invalid", f"Invalid value for field '{field_name}': {what}. The referenced network resource cannot be found.")
        return name

    def _subnetwork(self, region: str, url: str, field_name: str) -> dict:
        m = re.fullmatch(r"(?:.*/)?(?:regions/([^/]+)/)?subnetworks/([^/]+)", url)
        key = (m.group(1) or region, m.group(2)) if m else ("", "")
        if key[0] != region or key not in self.state.subnetworks:
            raise _Fault(400, "invalid", f"Invalid value for field '{field_name}': '{url}'. The referenced subnetwork resource cannot be found in region {region}.")
        return self.state.subnetworks[key]

    def _interface(self, zone: str, index: int, interface: dict) -> dict:
        """A network interface as NetworkInterface's description has it: the subnetwork implies
        its network; both given must agree; a custom-mode network needs a subnetwork."""
        region = zone.rsplit("-", 1)[0]
        field_name = f"resource.networkInterfaces[{index}]"
        url = f"{self.endpoint}/compute/v1/projects/{self.project}"
        if interface.get("subnetwork"):
            subnetwork = self._subnetwork(region, interface["subnetwork"], f"{field_name}.subnetwork")
            if interface.get("network") and self._network(interface["network"], f"{field_name}.network") != subnetwork["network"]:
                raise _Fault(
                    400, "invalid", f"Invalid value for field '{field_name}.subnetwork': '{interface['subnetwork']}'. Subnetwork should belong to network '{interface['network']}'."
                )
        else:
            network = self._network(interface.get("network"), f"{field_name}.network")
            if not self.state.networks[network]["autoCreateSubnetworks"]:
                raise _Fault(400, "invalid", f"Invalid value for field '{field_name}': Subnetwork should be specified for custom subnetmode network '{network}'.")
            subnetwork = self.state.subnetworks[(region, network)]
        reserved = next((a for (r, _), a in self.state.addresses.items() if r == region and a["address"] == interface.get("networkIP")), None)
        if reserved is not None and _last(reserved.get("subnetwork", "")) != subnetwork["name"]:
            # A reserved internal address belongs to the subnetwork it was reserved in.
            raise _Fault(
                400, "invalid", f"Invalid value for field '{field_name}.networkIP': '{reserved['address']}'. The address is reserved in subnetwork '{reserved.get('subnetwork')}', not in this interface's."
            )
        return {
            **interface,
            "network": f"{url}/global/networks/{subnetwork['network']}",
            "subnetwork": f"{url}/regions/{region}/subnetworks/{subnetwork['name']}",
        }

    def _next_ip(self) -> str:
        assert self._block is not None, "OfflineGCP is not started"
        return self._block.address(next(self._ips))

    def insert_instances(self, zone: str, bodies: list[dict], kind: str) -> dict:
        with self._lock:
            target = f"{self.endpoint}/compute/v1/projects/{self.project}/zones/{zone}/instances/{bodies[0]['name']}"
            for body in bodies:
                if (zone, body["name"]) in self.state.instances:
                    return self._operation("zones", zone, kind, target, (409, "RESOURCE_ALREADY_EXISTS", f"The resource '{body['name']}' already exists"))
            for body in bodies:
                error = self._insert_error(zone, body)
                if error is not None:
                    return self._operation("zones", zone, kind, target, error)
            made = [self._new_instance(zone, body) for body in bodies]
            for instance in made:
                self.state.instances[(zone, instance["name"])] = instance
            for instance in made:
                self._boot(instance)
            return self._operation("zones", zone, kind, target)


def noderunner_host(ip: str) -> str:
    from coiled_core.backend import loopback_address

    return loopback_address(ip)


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


_LABEL_TERM = re.compile(r"\(?\s*(labels\.[\w-]+|name|status|network)\s*(=|!=|:)\s*\"?([^\s\")]*)\"?\s*\)?")


def _matches(item: dict, filter_text: str) -> bool:
    """Compute's list filter, the forms the backend uses: ``labels.k = v``, ``labels.k:*``,
    ``name = x``, joined with AND (or spaces)."""
    if not filter_text:
        return True
    for field_name, op, value in _LABEL_TERM.findall(filter_text):
        if field_name.startswith("labels."):
            actual = item.get("labels", {}).get(field_name[7:])
        else:
            actual = item.get(field_name)
        if op == ":":
            ok = actual is not None if value == "*" else actual == value
        elif op == "=":
            ok = actual == value
        else:
            ok = actual != value
        if not ok:
            return False
    return True


def _page(items: list[dict], query: dict[str, str]) -> tuple[list[dict], str | None]:
    size = int(query.get("maxResults") or 500)
    start = int(query.get("pageToken") or 0)
    chunk = items[start : start + size]
    return chunk, (str(start + size) if start + size < len(items) else None)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (a killed process, a closed pool) is no error of the fake's.
        logger.debug("offline gce: connection from %s ended abruptly", client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: OfflineGCP
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("offline gce: " + format, *args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _reply(self, status: int, body: Any = None, raw: bytes | None = None, content_type: str = "application/json") -> None:
        if status == 204:
            # No content, as the real service answers: a body here would be read as the start of
            # the next response on this keep-alive connection.
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, reason: str, message: str) -> None:
        self._reply(status, offline_api.ApiError(status, reason, message).body())

    def _serve(self, method: str) -> None:
        fake = self.fake
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        pattern = re.sub(r"/(operation-[^/]+|[0-9a-f]{8,})", "/*", url.path)
        with fake._lock:
            fake.calls[f"{method} {pattern}"] = fake.calls.get(f"{method} {pattern}", 0) + 1
        authorization = self.headers.get("Authorization") or ""
        token = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else None
        with fake._lock:
            account = fake._account_tokens.get(token) if token else None
        if token != fake.token and account is None:
            return self._error(401, "authError", "Request had invalid authentication credentials.")
        with fake._lock:
            fault = next((f for f in fake._faults if f[0] == method and re.search(f[1], url.path)), None)
            if fault:
                fake._faults.remove(fault)
        if fault:
            return self._error(fault[2], fault[3], f"injected fault on {method} {url.path}")
        api = offline_api.route(method, url.path)
        if api is None:
            return self._error(404, "notFound", f"no such path {url.path}")
        try:
            offline_api.discovery(api.service).check_request(api, query, json.loads(body) if body and not api.media else None)
        except ValueError:
            return self._error(400, "parseError", "Invalid JSON payload received.")
        except offline_api.ApiError as e:
            with fake._lock:
                fake.refused.append(f"{api.id}: {e.message}")
            if e.operation_code:
                return self._reply(200, _refused_operation(fake, api, e))
            return self._reply(e.status, e.body())
        if account is not None:
            try:
                fake._authorize(account, api, query)
            except offline_api.ApiError as e:
                return self._reply(e.status, e.body())
            except offline_iam.UnknownCondition as e:  # a gap of the stand-in, never a grant
                return self._error(500, "backendError", f"the offline stand-in cannot evaluate this IAM condition: {e}")
        try:
            path = urllib.parse.unquote(url.path)
            if path.startswith("/compute/v1/projects/"):
                status, reply = _compute(fake, method, path[len("/compute/v1/projects/") :], query, body)
                if api.id == "compute.instances.delete" and status == 200:
                    # The operation is DONE once the machine has shut down, as on Compute
                    # Engine: what its node does at its end (ship its log) comes before the
                    # caller's next step (revoking the node's access). Outside the lock: the
                    # ending node still calls this server.
                    fake._kill(urllib.parse.unquote(api.params["instance"]))
            elif path.startswith(("/storage/v1/", "/upload/storage/v1/", "/download/storage/v1/")):
                status, reply = _storage(fake, method, url.path, query, body)
                if isinstance(reply, bytes):
                    return self._reply(status, raw=reply, content_type="application/octet-stream")
            elif re.fullmatch(r"/v1/projects/[^/:]+", path):
                status, reply = _projects(fake, method, path.rsplit("/", 1)[-1])
            elif re.match(r"/v1/projects/[^/]+/(serviceAccounts|roles)(/|$)", path):
                status, reply = _iam(fake, method, path[len("/v1/projects/") :], body)
            elif path.startswith("/v1/projects/"):
                status, reply = _secrets(fake, method, path[len("/v1/projects/") :], query, body)
            else:
                raise _Fault(404, "notFound", f"no such path {url.path}")
        except _Fault as f:
            return self._error(f.status, f.reason, f.message)
        except Exception as e:  # a bug of the fake: say so, as a 500
            logger.exception("offline gce")
            return self._error(500, "backendError", f"{type(e).__name__}: {e}")
        drift = offline_api.discovery(api.service).check_response(api, reply) if 200 <= status < 300 and reply is not None else []
        if drift:
            # The stand-in answered what the real service would not: a bug of the stand-in.
            with fake._lock:
                fake.drift.append(f"{api.id}: {'; '.join(drift)}")
            return self._error(500, "backendError", f"offline stand-in reply of {api.id} does not match its discovery document: {'; '.join(drift)}")
        self._reply(status, reply)


def _refused_operation(fake: OfflineGCP, api: offline_api.Route, error: offline_api.ApiError) -> dict:
    """A mutation Compute Engine accepts and fails: a DONE operation carrying the error."""
    params = api.params
    scope, where = ("zones", params["zone"]) if "zone" in params else ("regions", params["region"]) if "region" in params else ("global", "")
    target = f"{fake.endpoint}/compute/v1/projects/{fake.project}/{scope}/{where}".rstrip("/")
    with fake._lock:
        return fake._operation(scope, where, api.id.rsplit(".", 1)[-1], target, (error.status, error.operation_code or "", error.message))


def _compute(fake: OfflineGCP, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
    project, _, rest = path.partition("/")
    if project != fake.project:
        raise _Fault(403, "forbidden", f"Required 'compute.instances.list' permission for 'projects/{project}'")
    parts = rest.split("/")
    data = json.loads(body) if body else {}
    state = fake.state
    base = f"{fake.endpoint}/compute/v1/projects/{project}"
    with fake._lock:
        # operations: zones/Z/operations/N[/wait], regions/R/operations/N[/wait], global/operations/N[/wait]
        if "operations" in parts:
            name = parts[parts.index("operations") + 1]
            op = state.operations.get(name)
            if op is None:
                raise _Fault(404, "notFound", f"The resource 'operation {name}' was not found")
            return 200, op
        if parts[0] == "regions" and len(parts) == 2 and method == "GET":
            if parts[1] not in ZONES:
                raise _Fault(404, "notFound", f"The resource 'projects/{project}/regions/{parts[1]}' was not found")
            return 200, {"kind": "compute#region", "name": parts[1], "status": "UP", "zones": [f"{base}/zones/{z}" for z in ZONES[parts[1]]]}
        if parts[0] == "zones" and len(parts) >= 3 and parts[2] == "machineTypes":
            zone = parts[1]
            items = [_machine_type(base, zone, *t) for t in MACHINE_TYPES if not (t[0].startswith("t2a") and zone.endswith("-d"))]
            if len(parts) == 4:
                found = [i for i in items if i["name"] == parts[3]]
                if not found:
                    raise _Fault(404, "notFound", f"The resource 'machineTypes/{parts[3]}' was not found")
                return 200, found[0]
            chunk, token = _page(items, query)
            return 200, {"kind": "compute#machineTypeList", "items": chunk, **({"nextPageToken": token} if token else {})}
        if parts[0] == "zones" and len(parts) >= 3 and parts[2] == "instances":
            zone = parts[1]
            if not any(zone in zs for zs in ZONES.values()):
                raise _Fault(404, "notFound", f"The resource 'projects/{project}/zones/{zone}' was not found")
            if method == "POST" and len(parts) == 3:
                return 200, fake.insert_instances(zone, [data], "insert")
            if method == "POST" and parts[3] == "bulkInsert":
                template = data.get("instanceProperties", {})
                names = list(data.get("perInstanceProperties", {}))
                bodies = [{**json.loads(json.dumps(template)), "name": n} for n in names]
                if not bodies:
                    count = int(data.get("count", 0))
                    pattern = data.get("namePattern", "instance-####")
                    bodies = [{**template, "name": pattern.replace("####", f"{i:04d}")} for i in range(count)]
                return 200, fake.insert_instances(zone, bodies, "bulkInsert")
            if method == "GET" and len(parts) == 3:
                items = sorted((i for (z, _), i in state.instances.items() if z == zone and _matches(i, query.get("filter", ""))), key=lambda i: i["name"])
                chunk, token = _page(items, query)
                return 200, {"kind": "compute#instanceList", "items": chunk, **({"nextPageToken": token} if token else {})}
            name = parts[3]
            instance = state.instances.get((zone, name))
            if instance is None:
                raise _Fault(404, "notFound", f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found")
            if len(parts) == 5 and parts[4] in ("setIamPolicy", "getIamPolicy"):
                key = f"instances/{zone}/{name}"
                if parts[4] == "setIamPolicy":
                    state.policies[key] = {**data.get("policy", {}), "etag": _etag()}
                return 200, state.policies.get(key, {"etag": _etag()})
            if method == "GET":
                return 200, instance
            if method == "DELETE":
                del state.instances[(zone, name)]
                state.policies.pop(f"instances/{zone}/{name}", None)
                return 200, fake._operation("zones", zone, "delete", instance["selfLink"])
        if parts[0] == "aggregated" and parts[1] == "instances":
            items = sorted((i for i in state.instances.values() if _matches(i, query.get("filter", ""))), key=lambda i: (i["zone"], i["name"]))
            chunk, token = _page(items, query)
            grouped: dict[str, dict] = {f"zones/{z}": {"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "none"}} for zs in ZONES.values() for z in zs}
            for item in chunk:
                grouped.setdefault(f"zones/{_last(item['zone'])}", {}).pop("warning", None)
                grouped[f"zones/{_last(item['zone'])}"].setdefault("instances", []).append(item)
            return 200, {"kind": "compute#instanceAggregatedList", "items": grouped, **({"nextPageToken": token} if token else {})}
        if parts[0] == "global" and parts[1] == "firewalls":
            if method == "POST":
                network = fake._network(data.get("network"), "resource.network")
                data = {**data, "network": f"{base}/global/networks/{network}"}
                if data["name"] in state.firewalls:
                    return 200, fake._operation("global", "", "insert", f"{base}/global/firewalls/{data['name']}", (409, "RESOURCE_ALREADY_EXISTS", "exists"))
                state.firewalls[data["name"]] = {**data, "id": str(next(fake._ids)), "selfLink": f"{base}/global/firewalls/{data['name']}"}
                return 200, fake._operation("global", "", "insert", f"{base}/global/firewalls/{data['name']}")
            if method == "GET" and len(parts) == 2:
                items = [f for f in state.firewalls.values() if _matches(f, query.get("filter", ""))]
                chunk, token = _page(items, query)
                return 200, {"items": chunk, **({"nextPageToken": token} if token else {})}
            name = parts[2]
            if name not in state.firewalls:
                raise _Fault(404, "notFound", f"The resource 'projects/{project}/global/firewalls/{name}' was not found")
            if method == "GET":
                return 200, state.firewalls[name]
            del state.firewalls[name]
            return 200, fake._operation("global", "", "delete", f"{base}/global/firewalls/{name}")
        if parts[:2] == ["global", "networks"] and len(parts) == 3 and method == "GET":
            network = state.networks.get(parts[2])
            if network is None:
                raise _Fault(404, "notFound", f"The resource 'projects/{project}/global/networks/{parts[2]}' was not found")
            return 200, _network_resource(fake, base, network)
        if parts[0] == "regions" and len(parts) >= 3 and parts[2] == "subnetworks" and method == "GET":
            region = parts[1]
            if len(parts) == 4:
                subnetwork = state.subnetworks.get((region, parts[3]))
                if subnetwork is None:
                    raise _Fault(404, "notFound", f"The resource 'projects/{project}/regions/{region}/subnetworks/{parts[3]}' was not found")
                return 200, _subnetwork_resource(fake, base, region, subnetwork)
            items = [_subnetwork_resource(fake, base, r, s) for (r, _), s in sorted(state.subnetworks.items()) if r == region]
            items = [i for i in items if _matches(i, query.get("filter", ""))]
            chunk, token = _page(items, query)
            return 200, {"kind": "compute#subnetworkList", "items": chunk, **({"nextPageToken": token} if token else {})}
        if parts[0] == "regions" and len(parts) >= 3 and parts[2] == "addresses":
            region = parts[1]
            if method == "POST":
                if data.get("subnetwork"):
                    subnetwork = fake._subnetwork(region, data["subnetwork"], "resource.subnetwork")
                elif data.get("addressType") == "INTERNAL":
                    # An internal address without a subnetwork is the default network's.
                    subnetwork = fake._subnetwork(region, f"subnetworks/{fake._network(None, 'resource.subnetwork')}", "resource.subnetwork")
                else:
                    subnetwork = None
                if subnetwork is not None:
                    data = {**data, "subnetwork": f"{base}/regions/{region}/subnetworks/{subnetwork['name']}"}
                address = data.get("address") or fake._next_ip()
                state.addresses[(region, data["name"])] = {**data, "address": address, "id": str(next(fake._ids)), "status": "RESERVED"}
                return 200, fake._operation("regions", region, "insert", f"{base}/regions/{region}/addresses/{data['name']}")
            if method == "GET" and len(parts) == 3:
                items = [a for (r, _), a in state.addresses.items() if r == region and _matches(a, query.get("filter", ""))]
                chunk, token = _page(items, query)
                return 200, {"items": chunk, **({"nextPageToken": token} if token else {})}
            key = (region, parts[3])
            if key not in state.addresses:
                raise _Fault(404, "notFound", f"The resource 'addresses/{parts[3]}' was not found")
            if method == "GET":
                return 200, state.addresses[key]
            del state.addresses[key]
            return 200, fake._operation("regions", region, "delete", f"{base}/regions/{region}/addresses/{parts[3]}")
    raise _Fault(404, "notFound", f"no such compute path {path}")


def _network_resource(fake: OfflineGCP, base: str, network: dict) -> dict:
    name = network["name"]
    subnetworks = [f"{base}/regions/{r}/subnetworks/{s['name']}" for (r, _), s in sorted(fake.state.subnetworks.items()) if s["network"] == name]
    return {
        "kind": "compute#network",
        "id": str(abs(hash(name)) % 10**12),
        "name": name,
        "autoCreateSubnetworks": network["autoCreateSubnetworks"],
        "subnetworks": subnetworks,
        "selfLink": f"{base}/global/networks/{name}",
    }


def _subnetwork_resource(fake: OfflineGCP, base: str, region: str, subnetwork: dict) -> dict:
    return {
        "kind": "compute#subnetwork",
        "id": str(abs(hash((region, subnetwork["name"]))) % 10**12),
        "name": subnetwork["name"],
        "network": f"{base}/global/networks/{subnetwork['network']}",
        "region": f"{base}/regions/{region}",
        "ipCidrRange": subnetwork["ipCidrRange"],
        "selfLink": f"{base}/regions/{region}/subnetworks/{subnetwork['name']}",
    }


def _machine_type(base: str, zone: str, name: str, cpus: int, memory: int, accelerators: list[dict]) -> dict:
    return {
        "kind": "compute#machineType",
        "id": str(abs(hash(name)) % 10**12),
        "name": name,
        "guestCpus": cpus,
        "memoryMb": memory,
        "zone": zone,
        "isSharedCpu": name in ("e2-small", "e2-medium"),
        "accelerators": accelerators,
        "architecture": "ARM64" if name.startswith("t2a") else "X86_64",
        "selfLink": f"{base}/zones/{zone}/machineTypes/{name}",
    }


def _storage(fake: OfflineGCP, method: str, raw_path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
    state = fake.state
    parts = [urllib.parse.unquote(p) for p in raw_path.split("/")]
    # ['', 'storage'|'upload'|'download', ('storage',) 'v1', 'b', BUCKET, 'o', OBJECT]
    parts = [p for p in parts[1:] if p not in ("storage", "upload", "download", "v1")]
    with fake._lock:
        if parts == ["b"] and method == "POST":
            name = json.loads(body)["name"]
            if name in state.buckets:
                raise _Fault(409, "conflict", "Your previous request to create the named bucket succeeded and you already own it.")
            if query.get("project") != fake.project:
                raise _Fault(403, "forbidden", f"The caller does not have permission to create buckets in project {query.get('project')!r}")
            kept = {k: v for k, v in json.loads(body).items() if k in ("location", "iamConfiguration", "lifecycle", "labels")}
            state.buckets[name] = {**kept, "name": name, "projectNumber": fake.project_number, "id": name, "_readable": True}
            return 200, _public(state.buckets[name])
        bucket = parts[1]
        if bucket not in state.buckets:
            raise _Fault(404, "notFound", "The specified bucket does not exist.")
        if not state.buckets[bucket]["_readable"]:
            raise _Fault(403, "forbidden", f"The caller does not have storage.buckets.get access to the Google Cloud Storage bucket {bucket!r}.")
        if len(parts) == 2 and method == "DELETE":
            if any(b == bucket for b, _ in state.objects):
                raise _Fault(409, "conflict", "The bucket you tried to delete is not empty.")
            del state.buckets[bucket]
            return 204, None
        if len(parts) == 2:
            if method == "PATCH":
                state.buckets[bucket].update({k: v for k, v in json.loads(body).items() if k in ("lifecycle", "labels", "iamConfiguration")})
            return 200, _public(state.buckets[bucket])
        if parts[2] == "iam":
            key = f"buckets/{bucket}"
            current = state.policies.setdefault(key, {"version": 1, "bindings": [], "etag": _etag()})
            if method == "PUT":
                policy = json.loads(body)
                if policy.get("etag") not in (None, current["etag"]):
                    raise _Fault(412, "conditionNotMet", "At least one of the pre-conditions you specified did not hold.")
                if any("condition" in b for b in policy.get("bindings", [])) and policy.get("version") != 3:
                    raise _Fault(400, "invalid", "IAM policies with conditions must be version 3.")
                state.policies[key] = current = {**policy, "etag": _etag()}
            return 200, {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", **current}
        objects = state.objects
        if len(parts) == 3:  # o: list or upload
            if method == "POST":
                name = query["name"]
                current = objects.get((bucket, name))
                precondition = query.get("ifGenerationMatch")
                if precondition is not None and str(current["generation"] if current else 0) != precondition:
                    raise _Fault(412, "conditionNotMet", "At least one of the pre-conditions you specified did not hold.")
                meta = {
                    "name": name,
                    "bucket": bucket,
                    "generation": str(time.time_ns()),
                    "size": str(len(body)),
                    "md5Hash": base64.b64encode(hashlib.md5(body).digest()).decode(),
                }
                objects[(bucket, name)] = {**meta, "_data": body}
                return 200, meta
            prefix = query.get("prefix", "")
            items = [{k: v for k, v in o.items() if k != "_data"} for (b, n), o in sorted(objects.items()) if b == bucket and n.startswith(prefix)]
            chunk, token = _page(items, query)
            return 200, {"kind": "storage#objects", "items": chunk, **({"nextPageToken": token} if token else {})}
        name = "/".join(parts[3:])
        current = objects.get((bucket, name))
        if current is None:
            raise _Fault(404, "notFound", f"No such object: {bucket}/{name}")
        precondition = query.get("ifGenerationMatch")
        if precondition is not None and current["generation"] != precondition:
            raise _Fault(412, "conditionNotMet", "At least one of the pre-conditions you specified did not hold.")
        if method == "DELETE":
            del objects[(bucket, name)]
            return 204, None
        if query.get("alt") == "media":
            return 200, current["_data"]
        return 200, {k: v for k, v in current.items() if k != "_data"}


def _public(resource: dict) -> dict:
    """A resource as the API returns it: without the stand-in's own ``_`` fields."""
    return {k: v for k, v in resource.items() if not k.startswith("_")}


def _etag() -> str:
    return base64.b64encode(secrets.token_bytes(8)).decode()


def _iam(fake: OfflineGCP, method: str, path: str, body: bytes) -> tuple[int, Any]:
    """IAM v1: ``projects/P/serviceAccounts[/EMAIL]`` and ``projects/P/roles[/ID]``."""
    project, kind, *rest = path.split("/")
    if project != fake.project:
        raise _Fault(403, "forbidden", f"Permission denied on resource project {project}.")
    data = json.loads(body) if body else {}
    state = fake.state
    with fake._lock:
        if kind == "serviceAccounts":
            if method == "POST" and not rest:
                account_id = data.get("accountId", "")
                if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", account_id) or not 6 <= len(account_id) <= 30:
                    raise _Fault(400, "invalid", f"Invalid account id {account_id!r}: 6-30 characters, [a-z][-a-z0-9]*[a-z0-9].")
                email = f"{account_id}@{project}.iam.gserviceaccount.com"
                if email in state.service_accounts:
                    raise _Fault(409, "alreadyExists", f"Service account {account_id} already exists within project projects/{project}.")
                account = {**data.get("serviceAccount", {}), "name": f"projects/{project}/serviceAccounts/{email}", "projectId": project,
                           "uniqueId": str(next(fake._ids)), "email": email}
                state.service_accounts[email] = account
                return 200, account
            if len(rest) == 1:
                account = state.service_accounts.get(rest[0])
                if account is None:
                    raise _Fault(404, "notFound", f"Service account projects/{project}/serviceAccounts/{rest[0]} not found.")
                if method == "DELETE":
                    del state.service_accounts[rest[0]]
                    return 200, {}
                return 200, account
        if kind == "roles":
            if method == "POST" and not rest:
                name = f"projects/{project}/roles/{data.get('roleId')}"
                if name in state.roles:
                    raise _Fault(409, "alreadyExists", f"A role named {data.get('roleId')} in projects/{project} already exists.")
                state.roles[name] = {**data.get("role", {}), "name": name, "etag": _etag()}
                return 200, state.roles[name]
            if len(rest) == 1 and method == "GET":
                name = f"projects/{project}/roles/{rest[0]}"
                if name not in state.roles:
                    raise _Fault(404, "notFound", f"The role named {name} was not found.")
                return 200, state.roles[name]
    raise _Fault(404, "notFound", f"no such IAM path {path}")


def _projects(fake: OfflineGCP, method: str, project: str) -> tuple[int, Any]:
    """Cloud Resource Manager v1 ``projects.get``: the project's number."""
    if method != "GET" or project != fake.project:
        raise _Fault(403, "forbidden", f"The caller does not have permission (resourcemanager.projects.get on {project!r})")
    return 200, {"projectNumber": fake.project_number, "projectId": project, "lifecycleState": "ACTIVE", "name": project}


def _secrets(fake: OfflineGCP, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
    state = fake.state
    project, _, rest = path.partition("/")
    data = json.loads(body) if body else {}
    with fake._lock:
        if rest == "secrets" and method == "POST":
            name = f"projects/{project}/secrets/{query['secretId']}"
            if name in state.secrets:
                raise _Fault(409, "alreadyExists", f"Secret [{name}] already exists.")
            state.secrets[name] = {"name": name, "labels": data.get("labels", {}), "replication": data.get("replication", {}), "_versions": []}
            return 200, {k: v for k, v in state.secrets[name].items() if k != "_versions"}
        if rest == "secrets" and method == "GET":
            items = [{k: v for k, v in s.items() if k != "_versions"} for s in state.secrets.values() if _matches(s, query.get("filter", ""))]
            chunk, token = _page(items, {"maxResults": query.get("pageSize", "500"), "pageToken": query.get("pageToken", "")})
            return 200, {"secrets": chunk, **({"nextPageToken": token} if token else {})}
        m = re.fullmatch(r"secrets/([^/:]+)(:addVersion|/versions/latest:access|:setIamPolicy|:getIamPolicy)?", rest)
        if not m:
            raise _Fault(404, "notFound", f"no such path {rest}")
        name = f"projects/{project}/secrets/{m.group(1)}"
        secret = state.secrets.get(name)
        if secret is None:
            raise _Fault(404, "notFound", f"Secret [{name}] not found or has no versions.")
        if m.group(2) in (":setIamPolicy", ":getIamPolicy"):
            if m.group(2) == ":setIamPolicy":
                state.policies[f"secrets/{m.group(1)}"] = {**data.get("policy", {}), "etag": _etag()}
            return 200, state.policies.get(f"secrets/{m.group(1)}", {"etag": _etag()})
        if m.group(2) == ":addVersion":
            secret["_versions"].append(data["payload"]["data"])
            return 200, {"name": f"{name}/versions/{len(secret['_versions'])}", "state": "ENABLED"}
        if m.group(2):
            if not secret["_versions"]:
                raise _Fault(404, "notFound", f"Secret [{name}] not found or has no versions.")
            return 200, {"name": f"{name}/versions/{len(secret['_versions'])}", "payload": {"data": secret["_versions"][-1]}}
        if method == "DELETE":
            del state.secrets[name]
            state.policies.pop(f"secrets/{m.group(1)}", None)
            return 200, {}
        return 200, {k: v for k, v in secret.items() if k != "_versions"}
