"""Hook implementations of the ``gcp`` backend: Dask clusters on Compute Engine (contract v2).

A cluster is what Compute Engine says it is: instances labelled ``coiled-cluster=<label>``
(with role, owner, created-at and expires-at labels), two firewall rules named after the
cluster, the scheduler's reserved internal address, and Secret Manager secrets labelled with
the cluster. ``describe`` and ``list_clusters`` read the labels (aggregated list over the
region's zones); nothing depends on a file on the client. Each node runs the core's boot script
as its startup script (:mod:`coiled_gcp.bootstrap`) with the node add-on
(:class:`coiled_gcp.node.GCPNode`), and deletes its own instance when its agent ends.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from coiled_core.backend import (
    EXPIRY_GRACE,
    AddOnRef,
    ClaimLease,
    ClusterRecord,
    ClusterSpec,
    ClusterSpecError,
    ClusterState,
    ClusterTLS,
    EnvironmentBuildError,
    PlatformMismatchError,
    ProvisionError,
    SoftwareEnvironment,
    StoredFile,
    StoreError,
    TLSPolicy,
    WorkerRecord,
    agent_bundle,
    boot_software,
    build_environment_pack,
    build_node_config,
    client_cidr,
    dns_label,
    hookimpl,
    loopback_mode,
    map_address,
    node_requirements,
    past_lifetime,
    pinned_software,
    record_cluster_packs,
    software_environment,
    worker_name_prefix,
)
from coiled_gcp import bootstrap, identity, storage
from coiled_gcp import machine_types as mt
from coiled_gcp.options import GCPOptions, label_value
from coiled_gcp.session import GCP, OperationError, in_parallel

#: The hook contract this backend implements.
HOOK_API_VERSION = 2
BACKEND = "gcp"

LABEL_CLUSTER = "coiled-cluster"
LABEL_ROLE = "coiled-role"
LABEL_OWNER = "coiled-owner"
LABEL_CREATED = "coiled-created-at"  # epoch seconds (label values allow no ':')
LABEL_EXPIRES = "coiled-expires-at"  # epoch seconds, or "never"
#: Metadata item holding the cluster's exact name (labels are lower case).
NAME_ITEM = "coiled-cluster-name"
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
NODE_ADDON = "coiled_gcp.node:GCPNode"
NODE_ADDON_MODULE = "coiled_gcp.node"
NODE_LOG_MAX_BYTES = 50 * 2**20
#: Errors of an insert that mean "not this zone or type, now": try the next candidate.
CAPACITY_ERRORS = {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "QUOTA_EXCEEDED", "RESOURCE_POOL_EXHAUSTED", "UNSUPPORTED_OPERATION"}
LIVE_STATUSES = {"PROVISIONING", "STAGING", "RUNNING"}
DEFAULT_IMAGES = {False: "projects/debian-cloud/global/images/family/debian-12", True: "projects/debian-cloud/global/images/family/debian-12-arm64"}
#: Nodes with a GPU: a Deep Learning VM image whose NVIDIA driver CUDA 12.8 can use (plain Debian
#: has none, and the GPU would be attached and unusable), with the metadata that has the images
#: of that project install the driver if the family does not carry it.
GPU_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu128-ubuntu-2204-nvidia-570"
GPU_DRIVER_ITEM = {"key": "install-nvidia-driver", "value": "True"}
logger = logging.getLogger("coiled_gcp")

#: Today's generic Coiled keywords -> the option each sets.
KEYWORD_OPTIONS = {
    "region": "region",
    "worker_vm_types": "machine_types",
    "scheduler_vm_types": "scheduler_machine_types",
    "spot_policy": "spot_policy",
    "tags": "labels",
    "arm": "arm",
    "worker_disk_size": "boot_disk_gib",
    "allow_ingress_from": "allow_ingress_from",
    "worker_gpu_type": "gpu_type",
}


@hookimpl
def backend_options_model() -> type[GCPOptions]:
    return GCPOptions


@hookimpl
def keyword_options() -> dict[str, str]:
    return dict(KEYWORD_OPTIONS)


@hookimpl
def build_environment(software: SoftwareEnvironment, options: GCPOptions) -> str:
    """Build ``software``'s pack here and upload it to the artifact bucket, where nodes of every
    later cluster fetch it (``coiled env build NAME --backend gcp``)."""
    gcp = GCP(options)
    bucket = storage.ensure_bucket(gcp)
    machine = "aarch64" if getattr(software, "arm", False) or options.arm else "x86_64"
    store = bootstrap.node_store(bucket, token=gcp.access_token())
    try:
        return build_environment_pack(boot_software(software, node_requirements()), store, machine)
    except PlatformMismatchError as e:
        raise ClusterSpecError(f"software: {e}") from None
    except (EnvironmentBuildError, StoreError) as e:
        raise ProvisionError(str(e)) from None


@hookimpl
def tls_policy(options: GCPOptions) -> TLSPolicy:
    # TLS unless the user turns it off; off on public addresses, the core warns (as for AWS).
    reach = (options.allow_ingress_from or "this client's public address") if options.use_public_ip else None
    return TLSPolicy(default=True, required=False, public_reach=reach)


# -- names --------------------------------------------------------------------------------------
def cluster_label(name: str) -> str:
    """The cluster's label value, also the stem of its resource names (RFC 1035, short)."""
    label = dns_label(name, max_length=40)
    return label if label[0].isalpha() else f"c{label}"[:40]


def _firewall_names(label: str) -> list[str]:
    return [f"coiled-{label}-client", f"coiled-{label}-internal"]


def _firewall_marker(label: str) -> str:
    """Written in the description of the cluster's firewall rules (rules have no labels)."""
    return f"[{LABEL_CLUSTER}={label}]"


def _our_rule(rule: Any, label: str) -> bool:
    """Whether firewall rule ``rule`` is one this backend made for cluster ``label``: its name,
    the marker in its description and the cluster's network tag as its only target. A rule that
    only has one of our names is someone else's."""
    return (
        rule.name in _firewall_names(label)
        and _firewall_marker(label) in (rule.description or "")
        and list(rule.target_tags) == [f"coiled-{label}"]
    )


def _address_name(label: str) -> str:
    return f"coiled-{label}-scheduler"


def _claim_key(label: str) -> str:
    return f"claims/{label}.json"


# -- checks before anything exists --------------------------------------------------------------
@dataclass(frozen=True)
class _Network:
    """Where the nodes go: their VPC network (name) and subnetwork (partial URL; None on a legacy
    network, which has none)."""

    network: str
    subnetwork: str | None


@dataclass
class _Plan:
    zones: list[str]
    workers: list[mt.MachineType]
    scheduler: list[mt.MachineType]
    image: str
    cidr: str
    network: _Network


def _parameter(spec: ClusterSpec, keyword: str, option: str) -> str:
    return keyword if getattr(spec, keyword, None) not in (None, {}) else f"backend_options.{option}"


def _client_cidr(options: GCPOptions) -> str:
    return client_cidr(options.allow_ingress_from)


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _nodes_network(gcp: GCP, options: GCPOptions) -> _Network:
    """The nodes' network and subnetwork: a subnetwork implies its network (a network named beside
    it must be that one); a network alone means its one subnetwork in the region."""
    from google.api_core.exceptions import NotFound

    region = gcp.region
    if options.subnetwork:
        try:
            found = gcp.subnetworks.get(project=gcp.project, region=region, subnetwork=options.subnetwork)
        except NotFound:
            raise ClusterSpecError(f"backend_options.subnetwork: project {gcp.project!r} has no subnetwork {options.subnetwork!r} in region {region!r}") from None
        network = _last(found.network)
        if options.network and options.network != network:
            raise ClusterSpecError(
                f"backend_options.subnetwork: {options.subnetwork!r} belongs to network {network!r}, not to backend_options.network "
                f"{options.network!r}; leave network out (the subnetwork implies it) or name a subnetwork of {options.network!r}"
            )
        return _Network(network, f"regions/{region}/subnetworks/{options.subnetwork}")
    name = options.network or "default"
    try:
        found = gcp.networks.get(project=gcp.project, network=name)
    except NotFound:
        raise ClusterSpecError(
            f"backend_options.network: project {gcp.project!r} has no network {name!r}; name an existing one, "
            "e.g. backend_options={'network': 'my-vpc'} or {'subnetwork': 'my-subnet'}"
        ) from None
    if not found.subnetworks:
        return _Network(name, None)  # a legacy network: no subnetworks
    here = [url for url in found.subnetworks if f"/regions/{region}/" in url]
    if len(here) != 1:
        raise ClusterSpecError(
            f"backend_options.subnetwork: network {name!r} has {len(here) or 'no'} subnetworks in region {region!r}; "
            + ("name the one for the nodes" if here else "choose another region or network")
        )
    return _Network(name, f"regions/{region}/subnetworks/{_last(here[0])}")


def _types(gcp: GCP, spec: ClusterSpec, options: GCPOptions, zone: str) -> tuple[list[mt.MachineType], list[mt.MachineType]]:
    catalogue = mt.catalogue(gcp.machine_types, gcp.project, zone)
    arm = bool(options.arm)
    if options.machine_types:
        workers = mt.named(catalogue, options.machine_types, _parameter(spec, "worker_vm_types", "machine_types"), zone)
    else:
        workers = mt.choose(catalogue, spec.worker_cpu, spec.worker_memory, spec.worker_gpu, gpu_type=options.gpu_type, arm=arm)
    if options.scheduler_machine_types:
        scheduler = mt.named(catalogue, options.scheduler_machine_types, _parameter(spec, "scheduler_vm_types", "scheduler_machine_types"), zone)
    else:
        scheduler = mt.choose(catalogue, spec.scheduler_cpu, spec.scheduler_memory, 0, arm=arm, what="scheduler")
    return workers, scheduler


def _plan(gcp: GCP, spec: ClusterSpec, options: GCPOptions) -> _Plan:
    """Everything that can be wrong, found before anything is created."""
    try:
        options.zone_region_check()
    except ValueError as e:
        raise ClusterSpecError(f"backend_options.zone: {e}") from None
    if spec.container is not None or (spec.software is not None and software_environment(spec).conda is not None):
        raise ClusterSpecError("software, container: the gcp backend builds pip environments with uv; containers and conda are not supported yet")
    gcp.project  # credentials and project first: every other check needs them
    zones = gcp.zones()
    workers, scheduler = _types(gcp, spec, options, zones[0])
    image = options.image or DEFAULT_IMAGES[bool(options.arm)]
    network = _nodes_network(gcp, options)
    return _Plan(zones=zones, workers=workers, scheduler=scheduler, image=image, cidr=_client_cidr(options), network=network)


@hookimpl
def preflight(spec: ClusterSpec, options: GCPOptions) -> None:
    _plan(GCP(options), spec, options)


# -- boot ---------------------------------------------------------------------------------------
def _labels(spec: ClusterSpec, options: GCPOptions, role: str | None = None) -> dict[str, str]:
    now = int(time.time())
    try:
        owner = getpass.getuser()
    except Exception:
        owner = "unknown"
    labels = {
        **options.labels,
        LABEL_CLUSTER: cluster_label(spec.name),
        LABEL_OWNER: label_value(owner),
        LABEL_CREATED: str(now),
        LABEL_EXPIRES: str(int(now + spec.cluster_timeout)) if spec.cluster_timeout else "never",
    }
    if role:
        labels[LABEL_ROLE] = role
    return labels


#: Metadata item: the cluster's build id, under which its nodes share the packs they build.
BUILD_ITEM = "coiled-build"
#: The architectures whose pack pins a node may be given.
PACK_MACHINES = ("x86_64", "aarch64")


class _ClientStore:
    """The client's own access to the bucket (``get``/``put`` of a store program), for the pins
    of environment packs, which only clients write."""

    def __init__(self, gcp: GCP, bucket: str):
        self.gcp, self.bucket = gcp, bucket

    def get(self, key: str, target: Path) -> bool:
        found = storage.read(self.gcp, self.bucket, key)
        if found is None:
            return False
        Path(target).write_bytes(found[0])
        return True

    def put(self, path: Path, key: str) -> None:
        storage.write(self.gcp, self.bucket, key, Path(path).read_bytes())


@hookimpl
def cluster_started(record: ClusterRecord, options: GCPOptions) -> None:
    """Pin the packs the cluster's nodes built, before any user code runs on them."""
    build_id = record.backend_ids.get("build_id")
    if not build_id or not record.spec:
        return
    gcp = GCP(options)
    software = dataclasses.replace(boot_software(software_environment(ClusterSpec.model_validate(record.spec)), node_requirements()), build_id=build_id)
    try:
        record_cluster_packs(software, _ClientStore(gcp, storage.bucket_name(gcp)), PACK_MACHINES)
    except Exception as e:  # the cluster works; the next one builds again
        logger.warning("could not pin the environment packs of cluster %s: %s", record.name, e)


class _Boot:
    """The node configs and startup scripts of one cluster."""

    def __init__(self, gcp: GCP, spec: ClusterSpec, options: GCPOptions, network: _Network):
        self.gcp, self.spec, self.options, self.network = gcp, spec, options, network
        self.label = cluster_label(spec.name)
        self.bucket = storage.ensure_bucket(gcp)
        bundle = agent_bundle(Path.home() / ".cache" / "coiled" / "gcp", extra_modules=[NODE_ADDON_MODULE])
        stored = storage.upload_once(gcp, self.bucket, f"agent/{bundle.name}", bundle.read_bytes())
        self.bundle = StoredFile(stored.key, stored.sha256)
        # Nodes fetch a pack only if this client pinned it (coiled_core.node.envpack).
        self.software = pinned_software(boot_software(software_environment(spec), node_requirements()), _ClientStore(gcp, self.bucket), PACK_MACHINES)
        #: The nodes' service account: the user's own, or the cluster's (:mod:`coiled_gcp.identity`).
        self.own_account = options.service_account is None
        self.account = options.service_account or identity.account_email(gcp, self.label)

    def _addon(self, role: str) -> AddOnRef:
        settings: dict[str, Any] = {
            "project": self.gcp.project,
            "log_bucket": self.bucket,
            "log_key": f"{storage.log_prefix(self.label)}{{instance_id}}.log",
        }
        if _has_node_secrets(self.spec):
            settings["secret"] = storage.secret_id(self.label, role)
            if role == "scheduler":
                settings["delete_on_end"] = _secret_ids(self.label)
        return AddOnRef(NODE_ADDON, settings)

    def script(self, role: str, scheduler_address: str | None = None, memory_limit: int | None = None) -> str:
        if role == "scheduler":
            config = build_node_config(
                self.spec, "scheduler", scheduler_port=SCHEDULER_PORT, dashboard_port=DASHBOARD_PORT, include_environ=False, addon=self._addon(role)
            )
        else:
            config = build_node_config(
                self.spec, "worker", scheduler_address=scheduler_address, memory_limit=memory_limit, include_environ=False, addon=self._addon(role)
            )
        config.log_file = "node.log"
        config.log_max_bytes = NODE_LOG_MAX_BYTES
        return bootstrap.render(self.spec.name, config.to_dict(), self.software, self.bucket, self.bundle, log_prefix=storage.log_prefix(self.label))


def _has_node_secrets(spec: ClusterSpec) -> bool:
    return bool(spec.security or spec.environ)


def _secret_ids(label: str) -> list[str]:
    return [storage.secret_id(label, what) for what in ("scheduler", "worker")]


# -- instances ----------------------------------------------------------------------------------
def _instance_body(boot: _Boot, role: str, machine: mt.MachineType, zone: str, script: str, spot: bool, bulk: bool, ip: str | None = None) -> dict:
    spec, options = boot.spec, boot.options
    # An instance names its machine and accelerator types by (partial) URL; bulkInsert's
    # InstanceProperties only by name (a URL there is an INTERNAL_ERROR, says its description).
    prefix = "" if bulk else f"zones/{zone}/"
    # The subnetwork alone: it implies its network (both sent must agree).
    net = boot.network
    interface: dict[str, Any] = {"subnetwork": net.subnetwork} if net.subnetwork else {"network": f"global/networks/{net.network}"}
    if ip:
        interface["network_i_p"] = ip
    if options.use_public_ip:
        interface["access_configs"] = [{"name": "External NAT", "type_": "ONE_TO_ONE_NAT"}]
    scheduling: dict[str, Any] = {"automatic_restart": False}
    if spot:
        scheduling.update(provisioning_model="SPOT", instance_termination_action="DELETE")
    if spec.cluster_timeout:
        # The cloud ends the cluster even if its node cannot: maxRunDuration, then delete.
        scheduling.update(max_run_duration={"seconds": int(spec.cluster_timeout) + EXPIRY_GRACE}, instance_termination_action="DELETE")
    gpu = bool(machine.attach or machine.gpus)
    metadata = [{"key": "startup-script", "value": script}, {"key": NAME_ITEM, "value": spec.name},
                {"key": BUILD_ITEM, "value": boot.software.build_id}]
    if gpu and not options.image:
        metadata.append(dict(GPU_DRIVER_ITEM))
    body: dict[str, Any] = {
        "machine_type": machine.name if bulk else f"{prefix}machineTypes/{machine.name}",
        "labels": _labels(spec, options, role),
        "tags": {"items": [f"coiled-{boot.label}"]},
        "metadata": {"items": metadata},
        "network_interfaces": [interface],
        "disks": [
            {
                "boot": True,
                "auto_delete": True,
                "initialize_params": {"source_image": boot_image(options, gpu), "disk_size_gb": options.boot_disk_gib, "labels": _labels(spec, options, role)},
            }
        ],
        # Never the Compute Engine default account: what a node may do is its account's IAM.
        "service_accounts": [{"email": boot.account, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}],
        "scheduling": scheduling,
    }
    if machine.attach:
        body["guest_accelerators"] = [{"accelerator_type": t if bulk else f"{prefix}acceleratorTypes/{t}", "accelerator_count": n} for t, n in machine.attach]
    if gpu:
        scheduling["on_host_maintenance"] = "TERMINATE"
    return body


def boot_image(options: GCPOptions, gpu: bool = False) -> str:
    """``image`` if given; else a GPU node's :data:`GPU_IMAGE`, or plain Debian 12."""
    if options.image:
        return options.image
    return GPU_IMAGE if gpu and not options.arm else DEFAULT_IMAGES[bool(options.arm)]


def _markets(options: GCPOptions) -> list[bool]:
    """Spot or not, in the order ``spot_policy`` allows."""
    return {"on-demand": [False], "spot": [True], "spot_with_fallback": [True, False]}[options.spot_policy]


def _insert_scheduler(gcp: GCP, boot: _Boot, plan: _Plan, ip: str) -> str:
    """Insert the scheduler in the first zone and type with capacity; return its zone."""
    from google.cloud import compute_v1

    failures = []
    script = boot.script("scheduler")
    for zone in plan.zones:
        for machine in plan.scheduler:
            body = _instance_body(boot, "scheduler", machine, zone, script, spot=False, bulk=False, ip=ip)
            body["name"] = f"coiled-{boot.label}-scheduler"
            try:
                gcp.wait(gcp.instances.insert_unary(project=gcp.project, zone=zone, instance_resource=compute_v1.Instance(body)))
                if boot.own_account:
                    identity.grant_instances(gcp, zone, [body["name"]], boot.account)
                return zone
            except OperationError as e:
                if not set(e.codes) & CAPACITY_ERRORS:
                    raise
                failures.append(f"{zone}/{machine.name}: {', '.join(e.codes)}")
    raise ProvisionError(f"no capacity for the scheduler in any zone or machine type ({'; '.join(failures)})")


def _worker_names(label: str, count: int) -> list[str]:
    return [f"coiled-{label}-w-{secrets.token_hex(4)}" for _ in range(count)]


def _insert_workers(gcp: GCP, boot: _Boot, zones: list[str], types: list[mt.MachineType], count: int, scheduler_address: str) -> None:
    """All ``count`` workers in one bulkInsert, in the first zone, type and market with capacity."""
    from google.cloud import compute_v1

    failures = []
    for spot in _markets(boot.options):
        for zone in zones:
            for machine in types:
                script = boot.script("worker", scheduler_address, mt.worker_memory_limit(machine))
                properties = _instance_body(boot, "worker", machine, zone, script, spot=spot, bulk=True)
                names = _worker_names(boot.label, count)
                resource = compute_v1.BulkInsertInstanceResource(
                    count=count,
                    min_count=count,
                    instance_properties=compute_v1.InstanceProperties(properties),
                    per_instance_properties={n: compute_v1.BulkInsertInstanceResourcePerInstanceProperties() for n in names},
                )
                try:
                    gcp.wait(gcp.instances.bulk_insert_unary(project=gcp.project, zone=zone, bulk_insert_instance_resource_resource=resource))
                    if boot.own_account:
                        identity.grant_instances(gcp, zone, names, boot.account)
                    return
                except OperationError as e:
                    if not set(e.codes) & CAPACITY_ERRORS:
                        raise
                    failures.append(f"{zone}/{machine.name}{' spot' if spot else ''}: {', '.join(e.codes)}")
    raise ProvisionError(f"no capacity for {count} worker(s) in any zone, machine type or market ({'; '.join(failures)})")


def _reserve_address(gcp: GCP, boot: _Boot) -> str:
    """Reserve the scheduler's internal address, so workers know it before it boots."""
    from google.cloud import compute_v1

    name = _address_name(boot.label)
    body: dict[str, Any] = {"name": name, "address_type": "INTERNAL", "labels": _labels(boot.spec, boot.options, "scheduler"), "purpose": "GCE_ENDPOINT"}
    if boot.network.subnetwork:
        body["subnetwork"] = boot.network.subnetwork  # the nodes' (else the default network's)
    gcp.wait(gcp.addresses.insert_unary(project=gcp.project, region=gcp.region, address_resource=compute_v1.Address(body)))
    return gcp.addresses.get(project=gcp.project, region=gcp.region, address=name).address


def _create_firewalls(gcp: GCP, boot: _Boot, cidr: str) -> None:
    from google.cloud import compute_v1

    tag = f"coiled-{boot.label}"
    client_rule, internal_rule = _firewall_names(boot.label)
    network = f"global/networks/{boot.network.network}"  # the nodes' network
    rules = [
        {
            "name": client_rule,
            "network": network,
            "direction": "INGRESS",
            "source_ranges": [cidr],
            "target_tags": [tag],
            "allowed": [{"I_p_protocol": "tcp", "ports": [str(SCHEDULER_PORT), str(DASHBOARD_PORT)]}],
            "description": f"coiled cluster {boot.spec.name}: the client to the scheduler and dashboard {_firewall_marker(boot.label)}",
        },
        {
            "name": internal_rule,
            "network": network,
            "direction": "INGRESS",
            "source_tags": [tag],
            "target_tags": [tag],
            "allowed": [{"I_p_protocol": "all"}],
            "description": f"coiled cluster {boot.spec.name}: between its nodes {_firewall_marker(boot.label)}",
        },
    ]
    for rule in rules:
        gcp.wait(gcp.firewalls.insert_unary(project=gcp.project, firewall_resource=compute_v1.Firewall(rule)))


def _instances(gcp: GCP, label: str | None) -> list[Any]:
    """Every instance of cluster ``label`` (of any cluster if None), across zones, all pages."""
    from google.cloud import compute_v1

    term = f"labels.{LABEL_CLUSTER} = {label}" if label else f"labels.{LABEL_CLUSTER}:*"
    request = compute_v1.AggregatedListInstancesRequest(project=gcp.project, filter=term)
    found = []
    for _, scoped in gcp.instances.aggregated_list(request=request):
        found.extend(scoped.instances)
    # Zones of other regions are not this backend's (a cluster lives in one region).
    return [i for i in found if i.zone.rsplit("/", 1)[-1].startswith(gcp.region + "-")]


def _role(instance: Any) -> str | None:
    return instance.labels.get(LABEL_ROLE)


def _zone(instance: Any) -> str:
    return instance.zone.rsplit("/", 1)[-1]


def _delete_instances(gcp: GCP, instances: list[Any], parallel: int = 16) -> None:
    """Delete ``instances`` (``parallel`` at a time) and wait for every operation."""
    from google.api_core.exceptions import NotFound

    def delete(instance: Any) -> None:
        try:
            gcp.wait(gcp.instances.delete_unary(project=gcp.project, zone=_zone(instance), instance=instance.name))
        except NotFound:
            pass  # deleted itself meanwhile (its node ended)

    in_parallel(delete, instances, parallel)


# -- spec, secrets and claims -------------------------------------------------------------------
def _read_spec(gcp: GCP, label: str) -> dict[str, Any]:
    import json

    value = storage.get_secret(gcp, storage.secret_id(label, "spec"))
    return json.loads(value) if value else {}


def _store_secrets(gcp: GCP, spec: ClusterSpec, options: GCPOptions, tls: ClusterTLS | None) -> None:
    label = cluster_label(spec.name)
    labels = _labels(spec, options)
    storage.put_secret(gcp, storage.secret_id(label, "spec"), spec.model_dump_json(), labels)
    if _has_node_secrets(spec):
        for role in ("scheduler", "worker"):
            value = {"tls": tls.to_node_config(role) if tls else {}, "environ": dict(spec.environ or {})}
            storage.put_secret(gcp, storage.secret_id(label, role), storage.json_secret(value), {**labels, LABEL_ROLE: role})


def _read_claim(gcp: GCP, bucket: str, label: str) -> tuple[ClaimLease, str] | None:
    found = storage.read(gcp, bucket, _claim_key(label))
    return (ClaimLease.from_json(found[0].decode()), found[1]) if found else None


def _scheduler_live(instances: list[Any]) -> bool:
    return any(_role(i) == "scheduler" and i.status in LIVE_STATUSES for i in instances)


@hookimpl
def claim_name(name: str, options: GCPOptions) -> bool:
    """A claim object created with ``ifGenerationMatch=0`` (atomic); a stale one is deleted with
    its generation as precondition, so two takers cannot both win."""
    gcp = GCP(options)
    bucket = storage.ensure_bucket(gcp)
    label = cluster_label(name)
    for _ in range(3):
        if storage.write(gcp, bucket, _claim_key(label), ClaimLease.new().to_json().encode(), if_generation="0"):
            return True
        held = _read_claim(gcp, bucket, label)
        if held is None:
            continue
        lease, generation = held
        if not lease.is_stale(cluster_live=_scheduler_live(_instances(gcp, label))):
            return False
        storage.delete(gcp, bucket, _claim_key(label), if_generation=generation)
    return False


# -- hooks ----------------------------------------------------------------------------------------
@hookimpl
def provision(spec: ClusterSpec, options: GCPOptions, tls: ClusterTLS | None) -> ClusterRecord:
    if spec.security and tls is None:
        raise ProvisionError("security is on but the core handed over no TLS material")
    gcp = GCP(options)
    plan = _plan(gcp, spec, options)
    step = "preparing artifacts"
    try:
        boot = _Boot(gcp, spec, options, plan.network)
        if boot.own_account:
            step = "creating the nodes' service account"
            identity.ensure_node_role(gcp)
            identity.create_account(gcp, boot.label, spec.name)
            identity.grant_bucket(gcp, boot.bucket, boot.label, boot.account, boot.software.build_id)
        step = "creating the firewall rules"
        _create_firewalls(gcp, boot, plan.cidr)
        step = "storing secrets"
        _store_secrets(gcp, spec, options, tls)
        if boot.own_account and _has_node_secrets(spec):
            identity.grant_secrets(gcp, _secret_ids(boot.label), boot.account)
        step = "reserving the scheduler's address"
        ip = _reserve_address(gcp, boot)
        scheme = "tls" if spec.security else "tcp"
        step = "creating the scheduler"
        zone = _insert_scheduler(gcp, boot, plan, ip)
        if spec.n_workers:
            # Same wave: the workers know the scheduler's reserved address before it boots.
            step = f"creating {spec.n_workers} workers"
            zones = [zone] + [z for z in plan.zones if z != zone]
            _insert_workers(gcp, boot, zones, plan.workers, spec.n_workers, f"{scheme}://{ip}:{SCHEDULER_PORT}")
        storage.write(gcp, boot.bucket, _claim_key(boot.label), ClaimLease.new().provisioned().to_json().encode())
    except Exception as error:
        try:
            _delete_everything(gcp, spec.name)
        except Exception:
            logger.warning("rolling back %s failed; `coiled cluster gc` removes the rest", spec.name, exc_info=True)
        detail = str(error) if isinstance(error, (ProvisionError, ClusterSpecError)) else f"{type(error).__name__}: {error}"
        raise ProvisionError(f"{step} failed: {detail}") from error
    record = describe(spec.name, options)
    assert record is not None
    return record


_STATES = {
    "PROVISIONING": ClusterState.starting,
    "STAGING": ClusterState.starting,
    "RUNNING": ClusterState.running,
    "STOPPING": ClusterState.stopping,
    "SUSPENDING": ClusterState.stopping,
    "SUSPENDED": ClusterState.stopped,
    "TERMINATED": ClusterState.stopped,
}


def _address(instance: Any, port: int, scheme: str) -> str:
    interface = instance.network_interfaces[0]
    ip = interface.network_i_p
    public = interface.access_configs[0].nat_i_p if interface.access_configs else ""
    if public and not loopback_mode():
        ip = public
    return map_address(f"{scheme}://{ip}:{port}")


def _record(gcp: GCP, name: str, instances: list[Any]) -> ClusterRecord:
    label = cluster_label(name)
    schedulers = [i for i in instances if _role(i) == "scheduler"]
    scheduler = schedulers[0] if schedulers else None
    state = _STATES.get(scheduler.status, ClusterState.stopped) if scheduler else ClusterState.stopped
    spec = _read_spec(gcp, label)
    scheme = "tls" if spec.get("security") else "tcp"
    prefix = worker_name_prefix(name)
    workers = [
        WorkerRecord(name=f"{prefix}{i.name}", backend_ids={"instance": i.name, "zone": _zone(i)})
        for i in instances
        if _role(i) == "worker" and i.status in LIVE_STATUSES
    ]
    created = scheduler.labels.get(LABEL_CREATED) if scheduler else None
    return ClusterRecord(
        name=name,
        backend=BACKEND,
        state=state,
        scheduler_address=_address(scheduler, SCHEDULER_PORT, scheme) if scheduler else None,
        dashboard_url=_address(scheduler, DASHBOARD_PORT, "https" if spec.get("security") else "http") + "/status" if scheduler else None,
        workers=workers,
        created_at=datetime.fromtimestamp(int(created), timezone.utc) if created and created.isdigit() else datetime.now(timezone.utc),
        spec=spec,
        backend_ids={
            "project": gcp.project,
            "region": gcp.region,
            "scheduler_instance": scheduler.name if scheduler else None,
            "scheduler_zone": _zone(scheduler) if scheduler else None,
            "scheduler_private_ip": scheduler.network_interfaces[0].network_i_p if scheduler else None,
            "build_id": next((item.value for item in scheduler.metadata.items if item.key == BUILD_ITEM), None) if scheduler else None,
        },
    )


def _exact_name(instance: Any) -> str | None:
    return next((item.value for item in instance.metadata.items if item.key == NAME_ITEM), None)


@hookimpl
def describe(name: str, options: GCPOptions) -> ClusterRecord | None:
    gcp = GCP(options)
    instances = [i for i in _instances(gcp, cluster_label(name)) if _exact_name(i) in (None, name)]
    if not instances:
        return None
    return _record(gcp, name, instances)


@hookimpl
def scale(record: ClusterRecord, options: GCPOptions, n_workers: int, retired: list[str], tls: ClusterTLS | None) -> ClusterRecord:
    # New workers read their TLS material from Secret Manager, where provision put it.
    gcp = GCP(options)
    by_name = {w.name: w for w in record.workers}
    doomed = [by_name[n] for n in retired if n in by_name]
    if doomed:
        from google.cloud import compute_v1

        _delete_instances(gcp, [compute_v1.Instance(name=w.backend_ids["instance"], zone=w.backend_ids["zone"]) for w in doomed])
    missing = n_workers - (len(record.workers) - len(doomed))
    if missing > 0:
        spec = ClusterSpec.model_validate(record.spec)
        boot = _Boot(gcp, spec, options, _nodes_network(gcp, options))
        zone = record.backend_ids.get("scheduler_zone") or gcp.zones()[0]
        workers, _ = _types(gcp, spec, options, zone)
        scheme = "tls" if spec.security else "tcp"
        address = f"{scheme}://{record.backend_ids['scheduler_private_ip']}:{SCHEDULER_PORT}"
        _insert_workers(gcp, boot, [zone] + [z for z in gcp.zones() if z != zone], workers, missing, address)
    updated = describe(record.name, options)
    if updated is None:
        raise ProvisionError(f"cluster {record.name!r} disappeared while scaling")
    return updated


def _delete_everything(gcp: GCP, name: str) -> list[str]:
    """Delete every instance, firewall rule, address, secret and the claim of cluster ``name``
    (its logs stay, for ``logs`` after the end)."""
    return _delete_label(gcp, cluster_label(name), name)


def _delete_label(gcp: GCP, label: str, name: str) -> list[str]:
    """:func:`_delete_everything` by the cluster's label (gc knows only that of some leftovers)."""
    from google.api_core.exceptions import NotFound

    deleted = []
    instances = _instances(gcp, label)
    if instances:
        _delete_instances(gcp, instances)
        deleted.append(f"deleted {len(instances)} instance(s) of {name!r}")
    for rule in _firewall_names(label):
        try:
            if not _our_rule(gcp.firewalls.get(project=gcp.project, firewall=rule), label):
                logger.warning("firewall rule %s is not one this backend made (no marker or tag of cluster %s): left alone", rule, label)
                continue
            gcp.wait(gcp.firewalls.delete_unary(project=gcp.project, firewall=rule))
            deleted.append(f"deleted firewall rule {rule}")
        except NotFound:
            pass
    try:
        gcp.wait(gcp.addresses.delete_unary(project=gcp.project, region=gcp.region, address=_address_name(label)))
        deleted.append(f"released address {_address_name(label)}")
    except NotFound:
        pass
    for secret in [*_secret_ids(label), storage.secret_id(label, "spec")]:
        if storage.delete_secret(gcp, secret):
            deleted.append(f"deleted secret {secret}")
    try:
        bucket = storage.existing_bucket(gcp)
    except storage.ForeignBucketError:
        bucket = None  # another project's: no claim of ours is in it
    if bucket is not None:
        storage.delete(gcp, bucket, _claim_key(label))
        identity.revoke_bucket(gcp, bucket, label)
    if identity.delete_account(gcp, label):
        deleted.append(f"deleted service account {identity.account_id(label)}")
    return deleted


def _leftovers(gcp: GCP, label: str) -> list[str]:
    from google.api_core.exceptions import NotFound

    left = [i.name for i in _instances(gcp, label)]
    for rule in _firewall_names(label):
        try:
            if _our_rule(gcp.firewalls.get(project=gcp.project, firewall=rule), label):
                left.append(rule)
        except NotFound:
            pass
    left += storage.labelled_secrets(gcp, LABEL_CLUSTER, label)
    return left


@hookimpl
def teardown(record: ClusterRecord, options: GCPOptions) -> ClusterRecord:
    gcp = GCP(options)
    _delete_everything(gcp, record.name)
    left = _leftovers(gcp, cluster_label(record.name))
    if left:
        raise ProvisionError(f"teardown of {record.name!r} left {', '.join(left)}")
    return record.model_copy(update={"state": ClusterState.stopped, "workers": []})


@hookimpl
def list_clusters(options: GCPOptions) -> list[ClusterRecord]:
    gcp = GCP(options)
    by_name: dict[str, list[Any]] = {}
    for instance in _instances(gcp, None):
        name = _exact_name(instance) or instance.labels.get(LABEL_CLUSTER)
        by_name.setdefault(name, []).append(instance)
    return [_record(gcp, name, instances) for name, instances in sorted(by_name.items())]


@hookimpl
def logs(record: ClusterRecord, options: GCPOptions, tail: int | None) -> dict[str, str]:
    """Each node's log as it last uploaded it, by instance name: they outlive the machines."""
    gcp = GCP(options)
    bucket = storage.existing_bucket(gcp)
    return storage.read_logs(gcp, bucket, cluster_label(record.name), tail) if bucket else {}


def _expired(instances: list[Any]) -> bool:
    scheduler = next((i for i in instances if _role(i) == "scheduler" and i.status in LIVE_STATUSES), None)
    if scheduler is None:
        return True
    expires = scheduler.labels.get(LABEL_EXPIRES, "never")
    return expires.isdigit() and time.time() > int(expires) + EXPIRY_GRACE


def _labels_of_leftovers(gcp: GCP) -> set[str]:
    """Cluster labels of what a cluster that ended on its own (its instances deleted themselves)
    leaves: reserved addresses and secrets labelled with it, and firewall rules proven ours (our
    marker and tag, :func:`_our_rule`) whose cluster also has a claim or a labelled resource.
    A rule's name alone proves nothing: anyone may name a rule ``coiled-x-client``."""
    from google.cloud import compute_v1

    request = compute_v1.ListAddressesRequest(project=gcp.project, region=gcp.region, filter=f"labels.{LABEL_CLUSTER}:*")
    labels = {a.labels[LABEL_CLUSTER] for a in gcp.addresses.list(request=request) if LABEL_CLUSTER in a.labels}
    for secret in storage.labelled_secrets(gcp, LABEL_CLUSTER):
        labels.add(secret.removeprefix("coiled-").rsplit("-", 1)[0])
    bucket = storage.existing_bucket(gcp)
    for rule in gcp.firewalls.list(request=compute_v1.ListFirewallsRequest(project=gcp.project)):
        for suffix in ("-client", "-internal"):
            label = rule.name[len("coiled-") : -len(suffix)] if rule.name.startswith("coiled-") and rule.name.endswith(suffix) else ""
            if label and label not in labels and _our_rule(rule, label) and bucket and _read_claim(gcp, bucket, label):
                labels.add(label)
    return labels


@hookimpl
def gc(options: GCPOptions) -> list[str]:
    """Delete clusters without a live scheduler (or past their lifetime cap by more than
    ``EXPIRY_GRACE``), and secrets of clusters without instances that no one is creating."""
    gcp = GCP(options)
    removed: list[str] = []
    by_name: dict[str, list[Any]] = {}
    for instance in _instances(gcp, None):
        by_name.setdefault(_exact_name(instance) or instance.labels.get(LABEL_CLUSTER), []).append(instance)
    for name, instances in sorted(by_name.items()):
        if _expired(instances):
            record = _record(gcp, name, instances)
            if record.spec and not past_lifetime(record) and _scheduler_live(instances):
                continue
            removed += _delete_everything(gcp, name)
    labels_with_instances = {cluster_label(n) for n in by_name}
    bucket = storage.existing_bucket(gcp)
    for label in sorted(_labels_of_leftovers(gcp) - labels_with_instances):
        held = _read_claim(gcp, bucket, label) if bucket else None
        if held is not None and held[0].state == "claimed" and not held[0].is_stale(cluster_live=False):
            continue  # being created right now
        removed += _delete_label(gcp, label, label)
    return removed
