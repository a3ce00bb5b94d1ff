"""Per-cluster TLS: generated certificates, the store, and a real TLS-only Dask cluster.

The cluster tests start a real ``distributed.Scheduler`` and ``Worker`` in this process, bound to
127.0.0.1 only, and check that only holders of this cluster's certificates get in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import ssl
import stat
import subprocess
import sys
import time

import psutil
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from coiled_core.security import ROLES, ClusterTLS, delete_tls, security_from_node_config
from coiled_core.store import Store

HOSTS = ["10.1.2.3", "ip-10-1-2-3.ec2.internal", "2001:db8::1"]
#: How long a refused client may take to give up.
REFUSE_TIMEOUT = 5


@pytest.fixture(scope="module")
def tls() -> ClusterTLS:
    return ClusterTLS.generate("tls-test", HOSTS)


@pytest.fixture(scope="module")
def other_tls() -> ClusterTLS:
    """Another cluster's material: must never get into the first cluster."""
    return ClusterTLS.generate("other-cluster", ["127.0.0.1"])


# -- generation -------------------------------------------------------------------------------


def test_generate_is_fast():
    ClusterTLS.generate("warm-up", [])  # first call pays for importing cryptography
    best = min(_timed(lambda: ClusterTLS.generate("fast", HOSTS)) for _ in range(3))
    assert best < 0.3, f"generating cluster TLS took {best:.3f} s"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_ca_and_leaf_certificates(tls):
    ca = x509.load_pem_x509_certificate(tls.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.subject == ca.issuer
    validity = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert 360 <= validity.days <= 370

    for role in ROLES:
        cert_pem, key_pem = tls.cert_and_key(role)
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert.verify_directly_issued_by(ca)  # raises if not signed by this cluster's CA
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(san.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address("10.1.2.3"),
            ipaddress.ip_address("2001:db8::1"),
            ipaddress.ip_address("127.0.0.1"),
        }
        assert set(san.get_values_for_type(x509.DNSName)) == {"ip-10-1-2-3.ec2.internal", "localhost"}
        assert b"PRIVATE KEY" in key_pem
        assert key_pem not in repr(tls).encode()
    assert tls.ca_key not in repr(tls).encode()


def test_other_cluster_has_another_ca(tls, other_tls):
    ca = x509.load_pem_x509_certificate(tls.ca_cert)
    other_client = x509.load_pem_x509_certificate(other_tls.client_cert)
    with pytest.raises(Exception):
        other_client.verify_directly_issued_by(ca)


def test_issue_more_certificates(tls):
    cert_pem, _key = tls.issue("late-worker.tls-test", ["10.9.9.9"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(tls.ca_cert))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.9.9.9") in san.get_values_for_type(x509.IPAddress)


def test_invalid_names_and_roles(tls):
    for name in ("", "a/b", ".."):
        with pytest.raises(ValueError):
            ClusterTLS.generate(name, [])
    with pytest.raises(ValueError):
        tls.to_security("nanny")
    with pytest.raises(ValueError):
        security_from_node_config({"ca_cert": tls.ca_cert.decode()}, "worker")


# -- distributed.Security and node configs -----------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_to_security_is_in_memory(tls, role):
    sec = tls.to_security(role)
    cert, key = tls.cert_and_key(role)
    assert sec.require_encryption is True
    assert sec.tls_ca_file == tls.ca_cert.decode()
    assert getattr(sec, f"tls_{role}_cert") == cert.decode()
    assert getattr(sec, f"tls_{role}_key") == key.decode()
    # Servers also act as clients (get_client() in a task), with their own certificate.
    assert sec.tls_client_cert == cert.decode()
    for other in set(ROLES) - {role, "client"}:
        assert getattr(sec, f"tls_{other}_cert") is None
    assert isinstance(sec.get_listen_args(role)["ssl_context"], ssl.SSLContext)
    assert isinstance(sec.get_connection_args(role)["ssl_context"], ssl.SSLContext)


def test_to_security_ignores_dask_config_tls(tls):
    import dask.config

    with dask.config.set({"distributed.comm.tls.scheduler.cert": "/nonexistent/cert.pem"}):
        sec = tls.to_security("worker")
    assert sec.tls_scheduler_cert is None


def test_node_config_round_trip(tls):
    config = json.loads(json.dumps({**tls.to_node_config("scheduler"), **tls.to_node_config("worker")}))
    assert tls.ca_key.decode() not in json.dumps(config)
    for role in ("scheduler", "worker"):
        from_node = security_from_node_config(config, role)
        direct = tls.to_security(role)
        for field in ("tls_ca_file", f"tls_{role}_cert", f"tls_{role}_key", "tls_client_cert"):
            assert getattr(from_node, field) == getattr(direct, field)


def test_node_side_imports_stay_light(tls):
    """The node agent's path must not import cryptography or pydantic."""
    code = (
        "import json, sys\n"
        "from coiled_core.security import security_from_node_config\n"
        "sec = security_from_node_config(json.loads(sys.stdin.read()), 'worker')\n"
        "sec.get_listen_args('worker')\n"
        "print(json.dumps([m for m in ('cryptography', 'pydantic') if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(tls.to_node_config("worker")),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout) == []


# -- the store ---------------------------------------------------------------------------------


def test_store_round_trip_and_private_files(tls, tmp_path):
    store = Store(str(tmp_path / "store"))
    assert ClusterTLS.load(store, "tls-test", "local") is None
    tls.save(store, "tls-test", "local")
    assert ClusterTLS.load(store, "tls-test", "local") == tls

    names = list(store.list("clusters/local/tls-test/tls"))
    assert len(names) == 8
    for name in names:
        path = store.local_path(f"clusters/local/tls-test/tls/{name}")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, name

    delete_tls(store, "tls-test", "local")
    assert ClusterTLS.load(store, "tls-test", "local") is None
    delete_tls(store, "tls-test", "local")  # deleting twice is fine


def test_same_named_clusters_on_two_backends_keep_their_own_material(tmp_path):
    from coiled_core import credentials

    store = Store(str(tmp_path / "store"))
    mine, theirs = ClusterTLS.generate("twin"), ClusterTLS.generate("twin")
    credentials.save_for_start(store, "twin", mine, "local", {})
    credentials.save_for_start(store, "twin", theirs, "aws", {})
    assert ClusterTLS.load(store, "twin", "local") == mine and ClusterTLS.load(store, "twin", "aws") == theirs
    credentials.delete(store, "twin", "local")
    assert ClusterTLS.load(store, "twin", "local") is None
    assert ClusterTLS.load(store, "twin", "aws") == theirs  # untouched
    # The emptied backend folder goes with the last cluster's material; the other stays.
    assert list(store.list("clusters")) == ["aws"]
    credentials.delete(store, "twin", "aws")
    assert list(store.list("clusters")) == []


def test_incomplete_store_material_is_an_error(tls, tmp_path):
    store = Store(str(tmp_path / "store"))
    tls.save(store, "partial", "local")
    store.delete("clusters/local/partial/tls/client-key.pem")
    with pytest.raises(ValueError, match="client-key.pem"):
        ClusterTLS.load(store, "partial", "local")


# -- a real TLS-only cluster -------------------------------------------------------------------


def _listening_addresses() -> list[str]:
    return [
        c.laddr.ip
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


def _inc(x: int) -> int:
    return x + 1


async def _refused(address: str, security) -> BaseException:
    """Connect a Client and expect it to fail quickly; close it either way."""
    from distributed import Client

    start = time.monotonic()
    kwargs = {} if security is None else {"security": security}
    client = Client(address, asynchronous=True, timeout=2, set_as_default=False, **kwargs)
    try:
        with pytest.raises(Exception) as info:
            await client
            await client.submit(_inc, 1)
    finally:
        await client.close()
    assert time.monotonic() - start < REFUSE_TIMEOUT
    return info.value


def _raw_tls_handshake(address: str, context: ssl.SSLContext) -> None:
    """Connect and read: a server that refuses our certificate closes or errors the stream."""
    import socket

    host, port = address.removeprefix("tls://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=REFUSE_TIMEOUT) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls_sock:
            tls_sock.sendall(b"\x00" * 8)
            if not tls_sock.recv(1):  # TLS 1.3: refusal arrives after the handshake
                raise ConnectionError("closed by server")


def _server_certificate(address: str, context: ssl.SSLContext) -> bytes:
    """Complete a TLS handshake and return the server's certificate (DER)."""
    import socket

    host, port = address.removeprefix("tls://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=REFUSE_TIMEOUT) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls_sock:
            return tls_sock.getpeercert(binary_form=True)


def test_real_cluster_accepts_only_its_own_certificates(tls, other_tls, tmp_path):
    from distributed import Client, Scheduler, Security, Worker

    async def main() -> None:
        async with Scheduler(
            protocol="tls",
            host="127.0.0.1",
            port=0,
            dashboard=False,
            dashboard_address="127.0.0.1:0",
            security=tls.to_security("scheduler"),
        ) as scheduler:
            assert scheduler.address.startswith("tls://127.0.0.1:")
            async with Worker(
                scheduler.address,
                host="127.0.0.1",
                nthreads=1,
                dashboard_address="127.0.0.1:0",
                security=tls.to_security("worker"),
            ) as worker:
                assert worker.address.startswith("tls://127.0.0.1:")
                assert set(_listening_addresses()) == {"127.0.0.1"}

                # This cluster's client certificate works.
                client_security = tls.to_security("client")
                async with Client(scheduler.address, asynchronous=True, security=client_security) as client:
                    assert await client.submit(lambda a, b: a + b, 1, 1) == 2
                # So does a worker's or the scheduler's own Security used as a client, as
                # get_client() in a task or a scheduler extension would.
                for role in ("worker", "scheduler"):
                    own_security = tls.to_security(role)
                    async with Client(
                        scheduler.address, asynchronous=True, set_as_default=False, security=own_security
                    ) as client:
                        assert await client.submit(_inc, 1, pure=False) == 2

                # No security at all: refused before any bytes leave for tls://, and the
                # scheduler refuses plaintext on its port.
                await _refused(scheduler.address, None)
                await _refused(scheduler.address.replace("tls://", "tcp://"), None)
                # Another cluster's certificates: refused (the client rejects the server too).
                await _refused(scheduler.address, other_tls.to_security("client"))
                # Trusting this cluster's (public) CA certificate is not enough: the scheduler
                # refuses a client certificate from another CA.
                impostor_security = Security(
                    require_encryption=True,
                    tls_ca_file=tls.ca_cert.decode(),
                    tls_client_cert=other_tls.client_cert.decode(),
                    tls_client_key=other_tls.client_key.decode(),
                )
                assert "unknown ca" in str(await _refused(scheduler.address, impostor_security)).lower()

                # The server side on its own: trusting the right CA but presenting another
                # cluster's certificate, or none, the handshake is refused by the scheduler.
                impostor = ssl.create_default_context(cadata=tls.ca_cert.decode())
                impostor.check_hostname = False
                impostor.load_cert_chain(
                    *_pem_files(tmp_path / "other", other_tls.client_cert, other_tls.client_key)
                )
                anonymous = ssl.create_default_context(cadata=tls.ca_cert.decode())
                anonymous.check_hostname = False
                for context in (impostor, anonymous):
                    for address in (scheduler.address, worker.address):
                        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                            await asyncio.to_thread(_raw_tls_handshake, address, context)

                # Sanity check of the above: the same path with this cluster's certificate gets a
                # server certificate from this cluster.
                own = ssl.create_default_context(cadata=tls.ca_cert.decode())
                own.check_hostname = False
                own.load_cert_chain(*_pem_files(tmp_path / "own", tls.client_cert, tls.client_key))
                peer = await asyncio.to_thread(_server_certificate, scheduler.address, own)
                assert x509.load_der_x509_certificate(peer) == x509.load_pem_x509_certificate(
                    tls.scheduler_cert
                )

    (tmp_path / "other").mkdir()
    (tmp_path / "own").mkdir()
    asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert _listening_addresses() == [], "a server outlived the test"


def _pem_files(directory, cert: bytes, key: bytes) -> tuple[str, str]:
    """``ssl.SSLContext.load_cert_chain`` reads files only: write the pair, owner-only."""
    paths = (os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem"))
    for path, data in zip(paths, (cert, key)):
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(data)
    return paths
