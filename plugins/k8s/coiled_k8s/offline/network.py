"""The offline cluster's network: addresses and a small kube-proxy.

Pods get private addresses from ``POD_NETWORK`` and Services from ``SERVICE_NETWORK``, drawn at
random so that two offline clusters on one machine do not collide; nobody contacts them. Each is
owned on this machine by its loopback address (``coiled_core.backend.loopback_address``:
``10.B.C.D`` -> ``127.B.C.D``), which is where a pod's processes bind and what a Service's proxy
listens on. The proxy forwards each connection to a ready pod that the Service selects, as
kube-proxy does, for ClusterIP, NodePort (on the node's address) and LoadBalancer (on the
ingress address the fake assigns at once, as MetalLB would; connections from outside its
``loadBalancerSourceRanges`` are dropped) ports.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import threading
from collections.abc import Callable

from coiled_core.backend import loopback_address

POD_NETWORK = ipaddress.IPv4Network("10.128.0.0/10")
SERVICE_NETWORK = ipaddress.IPv4Network("10.96.0.0/12")
LOAD_BALANCER_NETWORK = ipaddress.IPv4Network("10.200.0.0/16")


class AddressPool:
    """Random unique addresses from one network, never ``.0`` or ``.255`` in the last octet."""

    def __init__(self, network: ipaddress.IPv4Network):
        self.network, self.used, self.lock = network, set(), threading.Lock()

    def take(self) -> str:
        with self.lock:
            while True:
                address = self.network[random.randrange(1, self.network.num_addresses - 1)]
                if str(address) not in self.used and 0 < int(address) % 256 < 255:
                    self.used.add(str(address))
                    return str(address)

    def give_back(self, address: str) -> None:
        with self.lock:
            self.used.discard(address)


class PortForwarder:
    """One listening address of a Service, forwarding every connection to a chosen backend."""

    def __init__(self, listen: tuple[str, int], pick_backend: Callable[[], tuple[str, int] | None],
                 allowed: list[str] | None = None):
        self.pick_backend = pick_backend
        #: The source networks admitted (a LoadBalancer's ``loadBalancerSourceRanges``; None: any).
        self.allowed = [ipaddress.ip_network(a, strict=False) for a in allowed] if allowed else None
        self.server = socket.create_server(listen)
        self.server.settimeout(0.5)
        self.closed = threading.Event()
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, name=f"proxy-{listen[0]}:{listen[1]}", daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, source = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.allowed is not None and not any(ipaddress.ip_address(source[0]) in n for n in self.allowed):
                client.close()  # dropped, as the balancer's firewall drops it
                continue
            # Each connection in its own thread: one slow backend (a frozen process whose accept
            # queue is full) must not hold up the others, as it would not behind DNAT.
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        backend = self.pick_backend()
        try:
            if backend is None:
                raise OSError("no ready endpoint")
            upstream = socket.create_connection(backend, timeout=30)  # about what SYN retries take
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        self.connections += [client, upstream]
        for source, target in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(source, target), daemon=True).start()

    def close(self) -> None:
        self.closed.set()
        self.server.close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ServiceProxy:
    """kube-proxy for the offline cluster: keeps one :class:`PortForwarder` per Service port."""

    def __init__(self, node_ip: str, endpoints: Callable[[dict, dict], list[tuple[str, int]]]):
        self.node_ip, self.endpoints = node_ip, endpoints
        self.forwarders: dict[str, list[PortForwarder]] = {}  # Service uid -> its forwarders

    def sync(self, services: list[dict]) -> None:
        """Open forwarders for new Services and close those of deleted ones."""
        wanted = {s["metadata"]["uid"]: s for s in services}
        for uid in [uid for uid in self.forwarders if uid not in wanted]:
            for forwarder in self.forwarders.pop(uid):
                forwarder.close()
        for uid, service in wanted.items():
            if uid not in self.forwarders:
                self.forwarders[uid] = self._open(service)

    def _open(self, service: dict) -> list[PortForwarder]:
        spec = service["spec"]
        addresses = [spec["clusterIP"]]
        addresses += [i["ip"] for i in (service.get("status", {}).get("loadBalancer", {}).get("ingress") or [])]
        opened = []
        for port in spec.get("ports") or []:
            def pick(port=port) -> tuple[str, int] | None:
                found = self.endpoints(service, port)
                return random.choice(found) if found else None

            # The balancer's addresses admit only its source ranges (the cluster IP and node
            # ports are not restricted by them, as in kube-proxy).
            ranges = spec.get("loadBalancerSourceRanges") or None
            listen = [(loopback_address(spec["clusterIP"]), port["port"], None)]
            listen += [(loopback_address(a), port["port"], ranges) for a in addresses[1:]]
            if port.get("nodePort"):
                listen.append((loopback_address(self.node_ip), port["nodePort"], None))
            for host, number, allowed in listen:
                try:
                    opened.append(PortForwarder((host, number), pick, allowed))
                except OSError:
                    pass  # taken on this machine: the address stays unreachable, as a broken proxy would
        return opened

    def close(self) -> None:
        for forwarders in self.forwarders.values():
            for forwarder in forwarders:
                forwarder.close()
        self.forwarders.clear()
