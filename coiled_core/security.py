"""Per-cluster TLS: a private certificate authority for every cluster, made on the client.

Every cluster gets its own CA, generated locally with ``cryptography`` when the cluster is created,
and one certificate and key per Dask role (scheduler, worker, client) signed by it. Dask's TLS is
mutual (``ssl.CERT_REQUIRED`` on both sides), so only holders of a certificate from *this*
cluster's CA can talk to its scheduler or workers: another cluster's certificates, or none, are
refused. Nothing here needs a cloud service or a shared secret beyond the store.

Why the shapes below:

- :class:`ClusterTLS` holds PEM bytes only, so it can be saved to the store, sent to nodes as
  JSON and turned into :class:`distributed.Security` objects without touching the file system.
- ``distributed.Security`` accepts the PEM *text itself* in ``tls_ca_file`` / ``tls_<role>_cert`` /
  ``tls_<role>_key`` (it treats any value containing a newline as in-memory contents), so
  :meth:`ClusterTLS.to_security` never writes key files that could be left behind.
- The node agent must start fast and import little: it reads a plain dict of PEM strings
  (:meth:`ClusterTLS.to_node_config`) and calls :func:`security_from_node_config`. This module
  therefore imports only the standard library at the top; ``cryptography`` is imported inside
  :meth:`ClusterTLS.generate` and ``distributed`` inside the functions that build ``Security``.
- The CA key is kept (and saved, privately) so that more certificates can be issued later, e.g.
  for a node whose address was not known at creation (:meth:`ClusterTLS.issue`).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping

if TYPE_CHECKING:  # pragma: no cover - imports for type checkers only
    from distributed import Security

from coiled_core.errors import ClusterSpecError
from coiled_core.store import Store

#: The Dask roles a cluster issues certificates for.
Role = Literal["scheduler", "worker", "client"]
ROLES: tuple[Role, ...] = ("scheduler", "worker", "client")

#: How long a cluster's CA and certificates are valid. Clusters are short-lived (they stop after
#: an idle timeout); a year only bounds how long leaked material stays useful.
VALIDITY = datetime.timedelta(days=365)
#: Certificates start to be valid this much before "now", so that nodes whose clocks lag the
#: client's a little still accept them.
CLOCK_SKEW = datetime.timedelta(minutes=5)
#: Names every certificate carries besides the cluster's hosts: local clusters and tunnels
#: connect through the loopback interface.
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")

#: File names under ``clusters/<name>/tls/`` in the store.
_CA_CERT = "ca.pem"
_CA_KEY = "ca-key.pem"


def cluster_key(backend: str, cluster_name: str) -> str:
    """Store key of what the store keeps for one cluster: ``clusters/<backend>/<name>``.

    Keyed by backend too: clusters of one name on two backends are two clusters. Rejects names
    that would escape the prefix.
    """
    for what, value in (("backend", backend), ("cluster name", cluster_name)):
        if not value or "/" in value or value in (".", ".."):
            raise ValueError(f"invalid {what} for TLS material: {value!r}")
    return f"clusters/{backend}/{cluster_name}"


def _tls_prefix(cluster_name: str, backend: str) -> str:
    """Store key prefix of a cluster's TLS material."""
    return f"{cluster_key(backend, cluster_name)}/tls"


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"unknown Dask role {role!r}; expected one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


def _fill_roles(role: Role) -> tuple[Role, ...]:
    """Which ``Security`` roles a process of ``role`` needs filled, its own first.

    A scheduler or worker also acts as a *client* at times: a task calling
    ``distributed.get_client()`` / ``worker_client()`` builds a ``Client`` from the worker's own
    ``Security``, and scheduler extensions may do the same. Those connections use the
    ``tls_client_*`` fields, so servers get their own certificate there too (leaf certificates
    are valid for both TLS server and client authentication).
    """
    return (role,) if role == "client" else (role, "client")


def _security(ca_cert: str, certs: Mapping[Role, tuple[str, str]]) -> "Security":
    """A ``distributed.Security`` requiring encryption, from in-memory PEM text.

    Every field is given explicitly (``None`` where unused) so that TLS settings in the user's
    dask config cannot mix another CA or certificate into this cluster's.
    """
    from distributed import Security

    fields: dict[str, Any] = {"tls_ca_file": ca_cert}
    for role in ROLES:
        cert, key = certs.get(role, (None, None))
        fields[f"tls_{role}_cert"] = cert
        fields[f"tls_{role}_key"] = key
    return Security(require_encryption=True, **fields)


def _parse_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    """An IP address if ``host`` is one (``[::1]`` brackets allowed), else the DNS name."""
    host = host.strip()
    if not host:
        raise ValueError("empty host name")
    try:
        return ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return host.lower().rstrip(".")


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    # X.509 limits a common name to 64 characters; cluster names may be longer.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "coiled-core"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _new_key() -> Any:
    """An EC P-256 key: generating one takes well under a millisecond (RSA-2048 takes ~50 ms)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _issue_leaf(ca_cert: Any, ca_key: Any, common_name: str, hosts: Iterable[str]) -> tuple[bytes, bytes]:
    """Certificate and key PEMs for one node or client, signed by the cluster CA.

    The SubjectAltNames list every host (Dask itself sets ``check_hostname = False``, but other
    TLS clients of the cluster, e.g. a proxy or a browser on the dashboard, may check them).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    sans: list[x509.GeneralName] = []
    seen: set[object] = set()
    for host in [*hosts, *DEFAULT_HOSTS]:
        parsed = _parse_host(host)
        if parsed in seen:
            continue
        seen.add(parsed)
        sans.append(x509.DNSName(parsed) if isinstance(parsed, str) else x509.IPAddress(parsed))

    key = _new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Never valid outside the CA's own validity.
        .not_valid_before(ca_cert.not_valid_before_utc)
        .not_valid_after(ca_cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # Every Dask role both listens and connects (see _fill_roles), so allow both.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


@dataclasses.dataclass(frozen=True)
class ClusterTLS:
    """A cluster's CA and its scheduler, worker and client certificates, all as PEM bytes.

    Keys are left out of ``repr`` so that logging a ``ClusterTLS`` cannot leak them.
    """

    ca_cert: bytes
    ca_key: bytes = dataclasses.field(repr=False)
    scheduler_cert: bytes
    scheduler_key: bytes = dataclasses.field(repr=False)
    worker_cert: bytes
    worker_key: bytes = dataclasses.field(repr=False)
    client_cert: bytes
    client_key: bytes = dataclasses.field(repr=False)

    # -- creation -----------------------------------------------------------------------------

    @classmethod
    def generate(cls, cluster_name: str, hosts: Iterable[str] = ()) -> ClusterTLS:
        """A fresh CA for ``cluster_name`` and a certificate for each role, valid for ``hosts``.

        ``hosts`` are the addresses the scheduler and workers will be reached at (IP addresses
        become IPAddress SANs, anything else a DNSName); "localhost" and "127.0.0.1" are always
        added. Uses EC P-256 keys: this runs on the cluster creation path and takes a few
        milliseconds, where RSA-2048 would take a few hundred.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        cluster_key("any", cluster_name)  # validates the name before any work
        hosts = list(hosts)
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = _new_key()
        ca_name = _name(f"coiled {cluster_name} CA")
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        leaves = {role: _issue_leaf(ca_cert, ca_key, f"{role}.{cluster_name}", hosts) for role in ROLES}
        return cls._from_parts(_cert_pem(ca_cert), _key_pem(ca_key), leaves)

    @classmethod
    def _from_parts(cls, ca_cert: bytes, ca_key: bytes, leaves: Mapping[str, tuple[bytes, bytes]]) -> ClusterTLS:
        return cls(
            ca_cert=ca_cert,
            ca_key=ca_key,
            scheduler_cert=leaves["scheduler"][0],
            scheduler_key=leaves["scheduler"][1],
            worker_cert=leaves["worker"][0],
            worker_key=leaves["worker"][1],
            client_cert=leaves["client"][0],
            client_key=leaves["client"][1],
        )

    @classmethod
    def from_security(cls, security: Security) -> ClusterTLS:
        """Per-role PEMs from a user's own ``distributed.Security`` (file paths or PEM text),
        so the nodes can be handed them. The CA key is unknown: no further certificates."""

        def pem(value: str | None) -> bytes:
            if not value:
                return b""
            if "\n" in value:
                return value.encode()
            with open(value, "rb") as f:
                return f.read()

        def pair(role: str) -> tuple[bytes, bytes]:
            cert = getattr(security, f"tls_{role}_cert", None) or security.tls_client_cert
            key = getattr(security, f"tls_{role}_key", None) or security.tls_client_key
            if not cert:
                raise ClusterSpecError(f"security: the given Security has no certificate for the {role}")
            return pem(cert), pem(key) if key else pem(cert)  # a combined cert+key file serves both

        if not security.tls_ca_file:
            raise ClusterSpecError("security: the given Security has no tls_ca_file")
        return cls._from_parts(pem(security.tls_ca_file), b"", {role: pair(role) for role in ROLES})

    def issue(self, common_name: str, hosts: Iterable[str] = ()) -> tuple[bytes, bytes]:
        """A further certificate and key (PEM) signed by this cluster's CA.

        For a node whose address was not known when the cluster was created, or a second
        client identity; why the CA key is kept at all.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        ca_cert = x509.load_pem_x509_certificate(self.ca_cert)
        ca_key = serialization.load_pem_private_key(self.ca_key, password=None)
        return _issue_leaf(ca_cert, ca_key, common_name, hosts)

    # -- use ----------------------------------------------------------------------------------

    def cert_and_key(self, role: str) -> tuple[bytes, bytes]:
        """The certificate and key PEMs of ``role``."""
        role = _check_role(role)
        return getattr(self, f"{role}_cert"), getattr(self, f"{role}_key")

    def to_security(self, role: str) -> "Security":
        """The ``distributed.Security`` for a process of ``role``, all in memory.

        ``require_encryption=True``, the cluster CA as ``tls_ca_file``, and the role's certificate
        and key as ``tls_<role>_cert`` / ``tls_<role>_key`` (schedulers and workers also get
        theirs as ``tls_client_*``, see :func:`_fill_roles`). No file is written here; distributed
        loads in-memory PEMs through a temporary directory it deletes at once.
        """
        return security_from_node_config(self.to_node_config(role), role)

    def to_node_config(self, role: str) -> dict[str, str]:
        """What a node of ``role`` needs, as JSON-ready PEM strings; never the CA key.

        Keys are ``ca_cert``, ``<role>_cert`` and ``<role>_key``, so the configs of several roles
        merge into one dict for a node that runs, say, both the scheduler and workers:
        ``{**tls.to_node_config("scheduler"), **tls.to_node_config("worker")}``.
        """
        cert, key = self.cert_and_key(role)
        if not cert or not key:
            raise ValueError(
                f"no {role} certificate and key: once a cluster has started, the store keeps only "
                "the client's (its nodes hold their own)"
            )
        return {"ca_cert": self.ca_cert.decode(), f"{role}_cert": cert.decode(), f"{role}_key": key.decode()}

    # -- persistence --------------------------------------------------------------------------

    def _files(self) -> dict[str, bytes]:
        files = {_CA_CERT: self.ca_cert, _CA_KEY: self.ca_key}
        for role in ROLES:
            cert, key = self.cert_and_key(role)
            files[f"{role}.pem"] = cert
            files[f"{role}-key.pem"] = key
        return files

    def client_connection_args(self) -> dict[str, Any]:
        """Connection arguments for ``distributed.rpc`` as this cluster's client, e.g. for a
        backend that calls its own scheduler handlers while scaling."""
        return self.to_security("client").get_connection_args("client")

    def save(self, store: Store, cluster_name: str, backend: str) -> None:
        """Write everything under ``clusters/<backend>/<name>/tls/`` in ``store``, owner-only where local.

        So that a client reconnecting to the cluster later (another process, ``coiled`` CLI) can
        load the client certificate, and nodes started later can be given theirs. The CA
        certificate is written last: :meth:`load` treats its presence as "complete".
        """
        prefix = _tls_prefix(cluster_name, backend)
        files = self._files()
        ca_cert = files.pop(_CA_CERT)
        for name, data in files.items():
            if data:  # a user's own Security brings no CA key
                store.write(f"{prefix}/{name}", data, private=True)
        store.write(f"{prefix}/{_CA_CERT}", ca_cert, private=True)

    @classmethod
    def load(cls, store: Store, cluster_name: str, backend: str) -> ClusterTLS | None:
        """The TLS material saved for ``cluster_name``, or None if there is none.

        Once a cluster is running the store keeps only what a client needs (the CA certificate
        and the client's certificate and key, see :mod:`coiled_core.credentials`); the other
        fields are then empty and :meth:`to_node_config` refuses the node roles. Raises
        ``ValueError`` if the client's part is incomplete: a partial set cannot be used and must
        not be silently replaced by a new CA, which would lock out the running cluster.
        """
        prefix = _tls_prefix(cluster_name, backend)
        ca_cert = store.read(f"{prefix}/{_CA_CERT}")
        if ca_cert is None:
            return None
        values: dict[str, bytes] = {"ca_cert": ca_cert}
        names = {"ca_key": _CA_KEY}
        for role in ROLES:
            names[f"{role}_cert"] = f"{role}.pem"
            names[f"{role}_key"] = f"{role}-key.pem"
        missing = []
        for field, name in names.items():
            data = store.read(f"{prefix}/{name}")
            if data is None and field.startswith("client_"):
                missing.append(name)
            values[field] = data or b""
        if missing:
            raise ValueError(
                f"TLS material of cluster {cluster_name!r} in the store is incomplete: missing {missing}"
            )
        return cls(**values)


def tls_files(roles: Iterable[str] = ROLES) -> list[str]:
    """File names under ``clusters/<backend>/<name>/tls/`` of the CA and of the certificates of ``roles``."""
    names = [_CA_CERT, _CA_KEY]
    for role in roles:
        names += [f"{role}.pem", f"{role}-key.pem"]
    return names


def delete_tls(store: Store, cluster_name: str, backend: str) -> None:
    """Remove a cluster's TLS material from ``store`` (when the cluster is gone); missing is fine."""
    store.delete(_tls_prefix(cluster_name, backend))


def security_from_node_config(config: Mapping[str, str], role: str) -> "Security":
    """A ``distributed.Security`` for ``role`` from a :meth:`ClusterTLS.to_node_config` dict.

    Needs nothing but ``distributed`` (imported here, where the node agent has it already) so the
    node agent can call it without importing ``cryptography`` or the rest of coiled_core.
    """
    role = _check_role(role)
    try:
        ca_cert = config["ca_cert"]
        pair = (config[f"{role}_cert"], config[f"{role}_key"])
    except KeyError as e:
        raise ValueError(f"TLS node config lacks {e.args[0]!r} for role {role!r}") from None
    for value in (ca_cert, *pair):
        # distributed tells in-memory PEM from a file path by a newline in the value.
        if "-----BEGIN" not in value or "\n" not in value:
            raise ValueError(f"TLS node config for role {role!r} does not hold PEM text")
    return _security(ca_cert, {r: pair for r in _fill_roles(role)})
