"""Hook implementations of the ``aws`` backend: Dask clusters on EC2 (hook contract version 2).

A cluster is what EC2 says it is: instances, a security group, a launch template, a node role
for its scheduler and one for its workers (:mod:`coiled_aws.iam`) and SSM parameters
(:mod:`coiled_aws.parameters`), all tagged ``coiled:cluster=<name>``. ``describe`` and
``list_clusters`` read those tags; nothing depends on a file on the client. Each node runs the
node agent from its boot script (see :mod:`coiled_aws.bootstrap`) with the backend's node add-on
(:class:`coiled_aws.node.AWSNode`), and powers itself off when the agent ends.

Secrets (each role's TLS material, the cluster's ``environ``, the spec that holds it) are
SecureStrings in SSM, never in user data; a node reads its role's with its own role, and the
scheduler deletes them all when the cluster ends on its own. ``gc`` removes what clusters without
a live scheduler left, found by instances, security groups or parameters, and clusters past their
lifetime cap by more than ``EXPIRY_GRACE``.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from coiled_aws import (
    artifacts,
    bootstrap,
    iam,
    launch,
    local_code,
    network,
    parameters,
)
from coiled_aws.instance_types import InstanceTypeInfo
from coiled_aws.network import Placement
from coiled_aws.options import AWSOptions
from coiled_aws.session import AWS
from coiled_core.backend import (
    EXPIRY_GRACE,
    POST_BUILD_INLINE_BYTES,
    AddOnRef,
    ClaimLease,
    ClusterRecord,
    ClusterSpec,
    ClusterSpecError,
    ClusterState,
    ClusterTLS,
    EnvironmentBuildError,
    NodeConfig,
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

#: The hook contract this backend implements (see ``coiled_core.hookspecs``).
HOOK_API_VERSION = 2

TAG_CLUSTER = "coiled:cluster"
TAG_ROLE = "coiled:role"
TAG_OWNER = "coiled:owner"
TAG_CREATED = "coiled:created-at"
TAG_EXPIRES = "coiled:expires-at"
#: On the scheduler: the sha256 of the local code (``include_local_code``) the nodes run.
TAG_LOCAL_CODE = "coiled:local-code"
#: On the scheduler: the cluster's build id, under which its nodes share the packs they build
#: (the only part of ``envs/`` its node roles may write).
TAG_BUILD = "coiled:build"
#: The architectures whose pack pins a node may be given (the key of a pack names its own).
PACK_MACHINES = ("x86_64", "aarch64")
logger = logging.getLogger("coiled_aws")

LIVE_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]
#: The node add-on every AWS node runs (shipped in the agent bundle).
NODE_ADDON = "coiled_aws.node:AWSNode"
#: The module of the add-on, by import name, for the agent bundle.
NODE_ADDON_MODULE = "coiled_aws.node"


@hookimpl
def backend_options_model() -> type[AWSOptions]:
    return AWSOptions


#: Today's generic Coiled keywords this backend understands -> the option each one sets. The
#: others (``worker_gpu_type``: on AWS a GPU model is chosen by naming instance types, as on
#: Coiled) are accepted with a warning by the core.
KEYWORD_OPTIONS = {
    "region": "region",
    "worker_vm_types": "instance_types",
    "scheduler_vm_types": "scheduler_instance_types",
    "spot_policy": "spot_policy",
    "tags": "tags",
    "arm": "arm",
    "worker_disk_size": "worker_root_volume_gib",
    "scheduler_disk_size": "scheduler_root_volume_gib",
    "allow_ssh": "allow_ssh",
    "allow_ingress_from": "allow_ingress_from",
    "use_best_zone": "use_best_zone",
    "scheduler_gpu": "scheduler_gpu",
}


@hookimpl
def build_environment(software: SoftwareEnvironment, options: AWSOptions) -> str:
    """Build ``software``'s pack here and upload it to the artifact bucket, where nodes of every
    later cluster fetch it (``coiled env build NAME --backend aws``)."""
    _check_software(software)
    aws = AWS(options)
    bucket = artifacts.ensure_bucket(aws)
    machine = "aarch64" if software.arm else "x86_64"
    try:
        return build_environment_pack(
            boot_software(software, node_requirements("boto3")), bootstrap.node_store(bucket, aws.account_id, aws.region), machine
        )
    except PlatformMismatchError as e:
        raise ClusterSpecError(f"software: {e}") from None
    except (EnvironmentBuildError, StoreError) as e:
        raise ProvisionError(str(e)) from None


@hookimpl
def keyword_options() -> dict[str, str]:
    return dict(KEYWORD_OPTIONS)


@hookimpl
def tls_policy(options: AWSOptions) -> TLSPolicy:
    # Cloud nodes are reachable over the network, so TLS is on unless the user turns it off;
    # security=False stays allowed (a private VPC may not need it); on public addresses the core
    # warns (one rule for every backend: TLSPolicy.public_reach).
    reach = (options.allow_ingress_from or "this client's public address") if options.use_public_ip else None
    return TLSPolicy(default=True, required=False, public_reach=reach)


# -- helpers ----------------------------------------------------------------------------------
def _tags(spec: ClusterSpec, options: AWSOptions, role: str | None = None) -> list[dict]:
    now = datetime.now(timezone.utc)
    try:
        owner = getpass.getuser()
    except Exception:
        owner = "unknown"
    tags = {
        **options.tags,
        "Name": f"{spec.name}-{role}" if role else spec.name,
        TAG_CLUSTER: spec.name,
        TAG_OWNER: owner,
        TAG_CREATED: now.isoformat(timespec="seconds"),
        TAG_EXPIRES: (now + timedelta(seconds=spec.cluster_timeout)).isoformat(timespec="seconds")
        if spec.cluster_timeout
        else "never",
    }
    if role:
        tags[TAG_ROLE] = role
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _resolve_ami(aws: AWS, options: AWSOptions, arch: str = "x86_64") -> str:
    """``ami``, else the current Amazon Linux 2023 image for ``arch`` from SSM's public parameters."""
    if options.ami:
        return options.ami
    from botocore.exceptions import ClientError

    name = f"/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
    try:
        return aws.client("ssm").get_parameter(Name=name)["Parameter"]["Value"]
    except ClientError:
        pass
    # Amazon's own standard AL2023 images only: "amazon" also owns Windows, EKS, ECS and minimal
    # images, which the name pattern leaves out (al2023-ami-2023.<version>-kernel-<k>-<arch>).
    filters = [
        {"Name": "name", "Values": [f"al2023-ami-2023.*-kernel-*-{arch}"]},
        {"Name": "architecture", "Values": [arch]},
        {"Name": "state", "Values": ["available"]},
        {"Name": "image-type", "Values": ["machine"]},
        {"Name": "root-device-type", "Values": ["ebs"]},
        {"Name": "virtualization-type", "Values": ["hvm"]},
    ]
    images = [
        image
        for image in aws.ec2.describe_images(Owners=["amazon"], Filters=filters)["Images"]
        if image.get("Architecture") == arch
        and image.get("Platform") != "windows"
        and image.get("Name", "").startswith("al2023-ami-2023.")
    ]
    if not images:
        raise ClusterSpecError(f"backend_options: no current Amazon Linux 2023 {arch} image found in {aws.region}; give ami='ami-...'")
    return max(images, key=lambda i: (i.get("CreationDate") or "", i.get("Name", "")))["ImageId"]


def _root_device(aws: AWS, spec: ClusterSpec, ami: str) -> str:
    """The image's root device name (``/dev/xvda`` on Amazon Linux, ``/dev/sda1`` on Ubuntu): the
    root volume's size is set on it, and any other name would add a second, empty volume."""
    from botocore.exceptions import ClientError

    try:
        images = aws.ec2.describe_images(ImageIds=[ami])["Images"]
    except ClientError as e:
        images = []
        if e.response.get("Error", {}).get("Code") not in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable"):
            raise
    if not images or not images[0].get("RootDeviceName"):
        raise ClusterSpecError(f"{_parameter(spec, 'ami', 'ami')}: image {ami!r} was not found in {aws.region} (or has no root device)")
    return images[0]["RootDeviceName"]


def _parameter(spec: ClusterSpec, keyword: str, option: str) -> str:
    """How to name a setting in a message: the generic keyword when the user gave it that way
    (the core copied it into ``option``), else the backend option."""
    return keyword if getattr(spec, keyword, None) not in (None, {}) else f"backend_options.{option}"


def _catalogue(aws: AWS) -> list[InstanceTypeInfo]:
    from coiled_aws.instance_types import describe_instance_types

    return describe_instance_types(aws.ec2, aws.region)


def _named_types(aws: AWS, spec: ClusterSpec, options: AWSOptions, role: str) -> list[InstanceTypeInfo] | None:
    """The instance types the user named for ``role`` nodes (checked to exist), or None."""
    from coiled_aws.instance_types import named_instance_types

    names = options.instance_types if role == "worker" else options.scheduler_instance_types
    if not names:
        return None
    option = "instance_types" if role == "worker" else "scheduler_instance_types"
    parameter = _parameter(spec, f"{role}_vm_types", option)
    return named_instance_types(_catalogue(aws), names, parameter, aws.region)


def _wants_arm(spec: ClusterSpec, options: AWSOptions, software: SoftwareEnvironment | None) -> bool | None:
    """``arm`` (True/False), or True for a software environment built for arm; None: not said."""
    software_arm = bool(getattr(software, "arm", False))
    if software_arm and options.arm is False:
        raise ClusterSpecError(
            f"{_parameter(spec, 'arm', 'arm')}: False, but the software environment {software.name!r} is built "
            "for arm (arm=True); leave arm out or use an x86_64 environment"
        )
    return True if software_arm else options.arm


def _architecture(spec: ClusterSpec, options: AWSOptions, named: list[InstanceTypeInfo] | None, wanted: bool | None, role: str) -> str | None:
    """The architecture of ``role`` nodes: what ``arm`` says, checked against the named types,
    else the named types' own; None when neither says."""
    from coiled_aws.instance_types import architecture_of

    if not named:
        return None if wanted is None else ("arm64" if wanted else "x86_64")
    option = "instance_types" if role == "worker" else "scheduler_instance_types"
    parameter = _parameter(spec, f"{role}_vm_types", option)
    if wanted is None:
        return architecture_of(named, parameter)
    arch = "arm64" if wanted else "x86_64"
    wrong = [t.name for t in named if arch not in t.architectures]
    if wrong:
        raise ClusterSpecError(
            f"{_parameter(spec, 'arm', 'arm')}: {wanted} asks for {arch} instance types, but {parameter} names "
            f"{', '.join(repr(w) for w in wrong)}, which {'is' if len(wrong) == 1 else 'are'} not {arch}; "
            f"name {arch} types (e.g. {'m7g.xlarge' if wanted else 'm7i.xlarge'}) or leave arm out"
        )
    return arch


def _chosen_types(aws: AWS, spec: ClusterSpec, options: AWSOptions, role: str, arch: str) -> list[str]:
    """Instance types that fit ``role``'s request (cpu, memory and GPUs; ranges for workers)."""
    from coiled_aws.instance_types import choose_instance_types

    if role == "worker":
        request: dict[str, Any] = {
            "cpu": spec.worker_cpu,
            "memory_bytes": spec.worker_memory,
            "gpus": spec.worker_gpu,
            "cpu_max": spec.worker_cpu_max,
            "memory_max": spec.worker_memory_max,
        }
    else:
        # As on Coiled: the scheduler gets a GPU when the workers have one, unless scheduler_gpu=False.
        gpu = options.scheduler_gpu if options.scheduler_gpu is not None else bool(spec.worker_gpu)
        request = {"cpu": spec.scheduler_cpu, "memory_bytes": spec.scheduler_memory, "gpus": 1 if gpu else 0}
    chosen = choose_instance_types(_catalogue(aws), arch=arch, what=role, region=aws.region, **request)
    return [t.name for t in chosen]


@dataclass
class _Types:
    """The candidate instance types and the architecture of each node role."""

    worker: list[str]
    scheduler: list[str]
    worker_arch: str
    scheduler_arch: str


def _instance_types(aws: AWS, spec: ClusterSpec, options: AWSOptions, software: SoftwareEnvironment | None) -> _Types:
    """Both roles' candidate types: the named ones (``worker_vm_types``/``scheduler_vm_types``)
    or the cheapest that fit, all of one architecture per role (``arm``, else the named types',
    else x86_64; the scheduler follows the workers unless its types say otherwise)."""
    wanted = _wants_arm(spec, options, software)
    named_workers = _named_types(aws, spec, options, "worker")
    named_scheduler = _named_types(aws, spec, options, "scheduler")
    worker_arch = _architecture(spec, options, named_workers, wanted, "worker") or "x86_64"
    scheduler_arch = _architecture(spec, options, named_scheduler, wanted, "scheduler") or worker_arch
    workers = [t.name for t in named_workers] if named_workers else _chosen_types(aws, spec, options, "worker", worker_arch)
    if named_scheduler:
        scheduler = [t.name for t in named_scheduler]
    else:
        scheduler = _chosen_types(aws, spec, options, "scheduler", scheduler_arch)
    return _Types(workers, scheduler, worker_arch, scheduler_arch)


def _client_address(instance: dict, port: int, scheme: str) -> str:
    """How the client reaches a node: its public address if it has one, else its private one
    (mapped to loopback by the offline simulator)."""
    ip = instance.get("PrivateIpAddress")
    if instance.get("PublicIpAddress") and not loopback_mode():
        ip = instance["PublicIpAddress"]
    return map_address(f"{scheme}://{ip}:{port}")


def _instances(aws: AWS, name: str | None, states: list[str] = LIVE_STATES) -> list[dict]:
    filters = [{"Name": "instance-state-name", "Values": states}]
    filters.append({"Name": f"tag:{TAG_CLUSTER}", "Values": [name]} if name else {"Name": "tag-key", "Values": [TAG_CLUSTER]})
    found = []
    for reservation in aws.ec2.describe_instances(Filters=filters)["Reservations"]:
        found.extend(reservation["Instances"])
    return found


def _tag(instance: dict, key: str) -> str | None:
    return next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == key), None)


def _scheduler_live(instances: list[dict]) -> bool:
    """Whether one of ``instances`` is a scheduler that is starting or running."""
    return any(_tag(i, TAG_ROLE) == "scheduler" and i["State"]["Name"] in ("pending", "running") for i in instances)


def _own_roles(options: AWSOptions, record: ClusterRecord | None = None) -> bool:
    """Whether the cluster's nodes run with the backend's own roles (to delete with it), not a
    pre-created ``iam_instance_profile``. The record's spec says so too: a caller tearing a
    cluster down by name may not repeat the options it was made with, and a client that may
    only pass a pre-created profile must not be made to touch IAM."""
    made_with = ((record.spec if record is not None else None) or {}).get("backend_options") or {}
    return not (options.iam_instance_profile or made_with.get("iam_instance_profile"))


# -- software ---------------------------------------------------------------------------------
#: ``[registry[:port]/]repository[:tag][@sha256:digest]``
_IMAGE = re.compile(
    r"^(?:[A-Za-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


def _software(spec: ClusterSpec) -> SoftwareEnvironment:
    """The cluster's software environment: ``container=`` as an ad hoc container environment
    (nodes run the image with docker, see :mod:`coiled_aws.bootstrap`), else ``software``'s, else
    the client's own versions."""
    software = software_environment(spec)
    if spec.container is None or software.container == spec.container:
        return software
    if spec.software is not None:
        raise ClusterSpecError(
            f"container: give either container={spec.container!r} or software={spec.software!r}, not both "
            "(a software environment can itself be a container: create_software_environment(container=...))"
        )
    if not _IMAGE.fullmatch(spec.container):
        raise ClusterSpecError(
            f"container: {spec.container!r} is not an image reference; use [registry/]repository[:tag][@sha256:digest], "
            "e.g. 'ghcr.io/dask/dask:latest'"
        )
    return SoftwareEnvironment(name="coiled/container", kind="container", container=spec.container, python=software.python)


def _check_software(software: SoftwareEnvironment | None) -> None:
    """Refuse, naming it, what of a software environment the nodes could not honour: they build
    a venv with pip (``post_build`` after), or run a container image (with pip packages and
    ``post_build`` on top); conda environments are not built on AWS yet."""
    if software is None:
        return
    what = f"software: environment {software.name!r}"
    if software.conda is not None:
        on_image = f" on top of the image {software.container!r}" if software.kind == "container" else ""
        raise ClusterSpecError(
            f"{what} has conda packages{on_image}: conda environments are not built on AWS yet (its nodes build "
            "a venv with pip, or run a container image, with pip packages and post_build on top): use pip=[...], "
            "or an image that holds the conda packages"
        )
    if getattr(software, "include_local_code", False):
        try:
            local_code.collect(Path.cwd())
        except local_code.LocalCodeError as e:
            raise ClusterSpecError(f"{what} has include_local_code=True, but {e}") from None


# -- secrets ----------------------------------------------------------------------------------
def _has_node_secrets(spec: ClusterSpec) -> bool:
    """Whether nodes read secrets from SSM: TLS material, or an ``environ`` to keep out of user data."""
    return bool(spec.security or spec.environ)


def _secret_names(spec: ClusterSpec) -> list[str]:
    """Every node secret parameter of ``spec``'s cluster, both roles'."""
    return [
        f"{parameters.role_secrets_path(spec.name, role)}/{key}"
        for role in parameters.NODE_ROLES
        for key in parameters.secret_keys(role, bool(spec.security), bool(spec.environ))
    ]


def _node_secrets(spec: ClusterSpec, tls: ClusterTLS | None) -> dict[str, dict[str, str]]:
    """Each node role's secrets: its own part of ``tls`` (separate keys per role) and ``environ``."""
    return {
        role: parameters.role_secrets(role, tls.to_node_config(role) if tls else None, spec.environ)
        for role in parameters.NODE_ROLES
    }


def _check_secret_sizes(spec: ClusterSpec) -> None:
    """What goes into one SSM parameter must fit there: found before anything exists."""
    try:
        parameters.check_size("environ", json.dumps(spec.environ, separators=(",", ":")))
        parameters.check_size("the cluster spec (with its environ)", spec.model_dump_json())
    except ValueError as e:
        raise ClusterSpecError(str(e)) from None


def _kms_key_arn(aws: AWS, options: AWSOptions) -> str | None:
    """The customer-managed key of ``kms_key_id`` as an ARN (checked to exist), else None."""
    if not options.kms_key_id:
        return None
    try:
        return parameters.resolve_kms_key(aws, options.kms_key_id)
    except ValueError as e:
        raise ClusterSpecError(f"backend_options: {e}") from None


# -- checks before anything exists ------------------------------------------------------------
@dataclass
class _Plan:
    """What the checks before anything exists resolved, for ``provision`` to use."""

    types: _Types
    #: The image of each role's architecture.
    amis: dict[str, str]
    #: The root device name of each role's image.
    root_devices: dict[str, str]
    cidr: str
    #: Where the scheduler may go, in order (more than one only with ``use_best_zone``); the
    #: workers go to the scheduler's subnet.
    placements: list[Placement]
    kms_key_arn: str | None

    @property
    def placement(self) -> Placement:
        return self.placements[0]


def _check_placement_options(spec: ClusterSpec, options: AWSOptions) -> None:
    if options.use_best_zone and (options.zone or options.subnet_id):
        fixed = f"zone={options.zone!r}" if options.zone else f"subnet_id={options.subnet_id!r}"
        raise ClusterSpecError(
            f"{_parameter(spec, 'use_best_zone', 'use_best_zone')}: True lets the cluster go to any zone of the "
            f"region, but backend_options {fixed} fixes one; give only one of them"
        )


def _plan(aws: AWS, spec: ClusterSpec, options: AWSOptions) -> _Plan:
    """Check everything that can be wrong with the request, creating nothing.

    Raises ``CoiledError`` without credentials, ``ClusterSpecError`` naming the option or
    parameter that cannot be met.
    """
    _check_placement_options(spec, options)
    software = _software(spec) if (spec.software is not None or spec.container is not None) else None
    _check_software(software)
    aws.account_id  # credentials first: every other check needs them
    types = _instance_types(aws, spec, options, software)
    amis = {arch: _resolve_ami(aws, options, arch) for arch in dict.fromkeys([types.scheduler_arch, types.worker_arch])}
    roots = {ami: _root_device(aws, spec, ami) for ami in set(amis.values())}
    placements = network.find_placements(aws.ec2, options)
    plan = _Plan(
        types=types,
        amis={"scheduler": amis[types.scheduler_arch], "worker": amis[types.worker_arch]},
        root_devices={"scheduler": roots[amis[types.scheduler_arch]], "worker": roots[amis[types.worker_arch]]},
        cidr=network.client_cidr(options),
        placements=placements if options.use_best_zone else placements[:1],
        kms_key_arn=_kms_key_arn(aws, options),
    )
    _check_secret_sizes(spec)
    _check_boundary(aws, options)
    return plan


def _check_boundary(aws: AWS, options: AWSOptions) -> None:
    """A given permissions boundary must exist (the default one may be made by ``provision``)."""
    if options.iam_instance_profile:
        return  # no roles of the backend's own: no boundary, and no IAM call at all
    try:
        iam.find_boundary(aws, options.permissions_boundary)
    except ValueError as e:
        raise ClusterSpecError(f"backend_options: {e}") from None


def _permissions_boundary(aws: AWS, options: AWSOptions) -> str | None:
    """The ARN of the boundary of the node roles to create (None with a pre-created profile):
    checked, or the default one created, before anything of the cluster exists."""
    if options.iam_instance_profile:
        return None
    try:
        return iam.ensure_boundary(aws, options.permissions_boundary)
    except ValueError as e:
        raise ClusterSpecError(f"backend_options: {e}") from None


@hookimpl
def preflight(spec: ClusterSpec, options: AWSOptions) -> None:
    _plan(AWS(options), spec, options)


# -- node configs and boot scripts --------------------------------------------------------------
#: The agent rotates node.log past this size, so a long-lived node's disk never fills.
NODE_LOG_MAX_BYTES = 50 * 2**20


class _Boot:
    """Renders the node configs and boot scripts of one cluster (both waves and later scale-ups)."""

    def __init__(
        self, aws: AWS, spec: ClusterSpec, options: AWSOptions, local_code_sha256: str | None = None, build_id: str | None = None
    ):
        """``local_code_sha256``: the local code the cluster's nodes already run (scaling up an
        existing cluster ships the same code, wherever the client runs); else the working
        directory's, zipped and uploaded now. ``build_id``: the cluster's build (scaling up),
        else a new one."""
        self.aws, self.spec, self.options = aws, spec, options
        self.software = _software(spec)
        # A bucket another account owns is refused here (ProvisionError), before anything exists.
        self.bucket = artifacts.ensure_bucket(aws)
        bundle = agent_bundle(Path.home() / ".cache" / "coiled" / "aws", extra_modules=[NODE_ADDON_MODULE])
        # Nodes fetch it with their own role and run it only if its sha256 is this one.
        self.bundle = artifacts.upload_once(aws, self.bucket, f"agent/{bundle.name}", bundle)
        # What else nodes run from the client is fetched and checked the same way.
        # post_build goes inline when short (see script() for when it does not fit after all).
        # Nodes fetch a pack only if this client pinned it; else they build and share it under
        # the cluster's build id, which their roles may write (and nothing else of envs/).
        self.boot_software = pinned_software(
            boot_software(self.software, node_requirements("boto3")), artifacts.ClientStore(aws, self.bucket), PACK_MACHINES
        )
        if build_id:
            self.boot_software = dataclasses.replace(self.boot_software, build_id=build_id)
        self.build_id = self.boot_software.build_id
        post_build = self.boot_software.post_build
        if isinstance(post_build, str) and len(post_build.encode()) > POST_BUILD_INLINE_BYTES:
            self._ship_post_build()
        self.local_code: artifacts.StoredObject | None = None
        if getattr(self.software, "include_local_code", False):
            if local_code_sha256:
                key = f"agent/code-{local_code_sha256}.zip"
                self.local_code = artifacts.StoredObject(self.bucket, key, local_code_sha256, aws.account_id, aws.region)
            else:
                try:
                    data = local_code.archive(Path.cwd())
                except local_code.LocalCodeError as e:
                    raise ClusterSpecError(f"software: environment {self.software.name!r} has include_local_code=True, but {e}") from None
                key = artifacts.content_key("agent/code-", data, ".zip")
                self.local_code = artifacts.upload_bytes_once(aws, self.bucket, key, data)

    def _ship_post_build(self) -> None:
        """Put the post_build script in the bucket (named by its sha256) instead of the user data."""
        post_build = self.boot_software.post_build
        assert isinstance(post_build, str)
        data = post_build.encode()
        key = artifacts.content_key("agent/post-build-", data, ".sh")
        stored = artifacts.upload_bytes_once(self.aws, self.bucket, key, data)
        self.boot_software = dataclasses.replace(self.boot_software, post_build=StoredFile(stored.key, stored.sha256))

    def tags(self, role: str) -> list[dict]:
        """The tags of a node of ``role``: the scheduler's say which local code the cluster runs."""
        tags = _tags(self.spec, self.options, role)
        if role == "scheduler" and self.local_code is not None:
            tags.append({"Key": TAG_LOCAL_CODE, "Value": self.local_code.sha256})
        if role == "scheduler" and self.build_id:
            tags.append({"Key": TAG_BUILD, "Value": self.build_id})
        return tags

    def _addon(self, role: str) -> AddOnRef:
        """The node add-on's settings for a node of ``role`` (see :mod:`coiled_aws.node`)."""
        settings: dict[str, Any] = {
            "region": self.aws.region,
            "log_bucket": self.bucket,
            "log_key": artifacts.log_key(self.spec.name, "{instance_id}"),
            # S3 refuses the upload if another account owns the bucket.
            "expected_bucket_owner": self.aws.account_id,
        }
        if _has_node_secrets(self.spec):
            # No `environ` or TLS material in the config: user data is readable by other
            # principals. The node reads them from SSM with its own role.
            settings["secrets_prefix"] = parameters.role_secrets_path(self.spec.name, role)
            if role == "scheduler":
                # A cluster that ends on its own takes its secrets with it: the scheduler deletes
                # them (its role may, on this cluster's paths only) while its node still counts
                # as live, so no new cluster of the same name can own them yet.
                settings["delete_on_end"] = _secret_names(self.spec)
        return AddOnRef(NODE_ADDON, settings)

    def _finish(self, config: NodeConfig) -> NodeConfig:
        # The boot script appends all output to node.log (in the node's root, the agent's working
        # directory); the agent rotates it and the add-on ships it to the bucket.
        config.log_file = "node.log"
        config.log_max_bytes = NODE_LOG_MAX_BYTES
        return config

    def scheduler(self) -> NodeConfig:
        """The scheduler node's config; it binds to its own (pre-allocated) private address."""
        config = build_node_config(
            self.spec,
            "scheduler",
            scheduler_port=network.SCHEDULER_PORT,
            dashboard_port=network.DASHBOARD_PORT,
            include_environ=False,
            addon=self._addon("scheduler"),
        )
        return self._finish(config)

    def worker(self, scheduler_address: str, memory_limit: int | None) -> NodeConfig:
        """A worker node's config: one worker, named by the add-on after its instance."""
        config = build_node_config(
            self.spec,
            "worker",
            scheduler_address=scheduler_address,
            memory_limit=memory_limit,
            include_environ=False,
            addon=self._addon("worker"),
        )
        return self._finish(config)

    def script(self, config: NodeConfig) -> str:
        try:
            return self._render(config)
        except ValueError:
            if not isinstance(self.boot_software.post_build, str):
                raise
            self._ship_post_build()  # short, but the user data is full: from the bucket then
            return self._render(config)

    def _render(self, config: NodeConfig) -> str:
        return bootstrap.render(
            self.spec.name,
            config.to_dict(),
            self.boot_software,
            self.bundle,
            local_code=self.local_code,
            log_prefix=artifacts.log_prefix(self.spec.name),
        )


def _worker_memory_limit(aws: AWS, instance_type: str) -> int | None:
    from coiled_aws.instance_types import describe_instance_types, worker_memory_limit

    for info in describe_instance_types(aws.ec2, aws.region):
        if info.name == instance_type:
            return worker_memory_limit(info)
    return None


def _launch_template_name(cluster: str) -> str:
    """A new launch template's name (unique in the region, at most 128 characters): the
    cluster's name as a label (:func:`dns_label` keeps ``My_Cluster`` and ``my-cluster`` apart)
    and a random suffix; the template carries the exact name in its tags."""
    return f"{dns_label(cluster, max_length=119, prefix='coiled-')}-{secrets.token_hex(4)}"


def _launch_workers(aws: AWS, boot: _Boot, request_base: dict[str, Any], types: list[str], count: int, scheduler_address: str) -> list[str]:
    spec, options = boot.spec, boot.options
    memory_limit = _worker_memory_limit(aws, types[0])
    request = launch.LaunchRequest(
        user_data=boot.script(boot.worker(scheduler_address, memory_limit)), tags=boot.tags("worker"), **request_base
    )
    if options.spot_policy == "spot_with_fallback":
        template, version = launch.launch_template(aws.ec2, _launch_template_name(spec.name), request)
        return launch.create_fleet(aws.ec2, request, template, types, count, version)
    instances = launch.run_instances(aws.ec2, request, types, count, spot=options.spot_policy == "spot")
    return [i["InstanceId"] for i in instances]


# -- name claims --------------------------------------------------------------------------------
def _read_claim(aws: AWS, name: str) -> ClaimLease | None:
    """The lease in ``name``'s claim parameter, or None if there is none."""
    from botocore.exceptions import ClientError

    try:
        value = aws.client("ssm").get_parameter(Name=parameters.claim_parameter(name))["Parameter"]["Value"]
    except ClientError as e:
        if e.response["Error"]["Code"] == "ParameterNotFound":
            return None
        raise
    return ClaimLease.from_json(value)


def _write_claim(aws: AWS, name: str, lease: ClaimLease, overwrite: bool) -> None:
    aws.client("ssm").put_parameter(
        Name=parameters.claim_parameter(name), Value=lease.to_json(), Type="String", Overwrite=overwrite
    )


@hookimpl
def claim_name(name: str, options: AWSOptions) -> bool:
    """An SSM parameter created with ``Overwrite=False`` is the atomic claim; it holds a
    :class:`ClaimLease`, since no client can see whether another one's process still lives."""
    from botocore.exceptions import ClientError

    aws = AWS(options)
    for _ in range(3):
        try:
            _write_claim(aws, name, ClaimLease.new(), overwrite=False)
            return True
        except ClientError as e:
            if e.response["Error"]["Code"] != "ParameterAlreadyExists":
                raise
        held = _read_claim(aws, name)
        if held is None:
            continue  # released meanwhile: try again
        if not held.is_stale(cluster_live=_scheduler_live(_instances(aws, name, ["pending", "running"]))):
            return False
        aws.client("ssm").delete_parameter(Name=parameters.claim_parameter(name))
    return False


def _being_created(aws: AWS, name: str) -> bool:
    """Whether a live claim says some process is creating ``name`` right now."""
    held = _read_claim(aws, name)
    return held is not None and held.state == "claimed" and not held.is_stale(cluster_live=False)


# -- hooks ------------------------------------------------------------------------------------
@hookimpl
def provision(spec: ClusterSpec, options: AWSOptions, tls: ClusterTLS | None) -> ClusterRecord:
    if spec.security and tls is None:
        raise ProvisionError("security is on but the core handed over no TLS material")
    aws = AWS(options)
    # Everything that can be wrong with the request is found before anything is created (the
    # core ran preflight already; a direct caller did not).
    plan = _plan(aws, spec, options)
    boundary = _permissions_boundary(aws, options)
    step = "preparing artifacts"
    try:
        boot = _Boot(aws, spec, options)
        step = "creating the security group"
        group_id = network.create_security_group(
            aws.ec2, plan.placement, spec.name, plan.cidr, _tags(spec, options), allow_ssh=options.allow_ssh
        )
        step = "creating the node roles"
        profiles = _node_profiles(aws, spec, options, boundary, plan.kms_key_arn, boot.build_id)
        step = "storing secrets"
        # The spec holds `environ`: a SecureString like the nodes' secrets.
        parameters.put_secure(aws, parameters.spec_parameter(spec.name), spec.model_dump_json(), plan.kms_key_arn)
        if _has_node_secrets(spec):
            parameters.put_secrets(aws, spec.name, _node_secrets(spec, tls), _tags(spec, options), plan.kms_key_arn)
        base = {
            "security_group_ids": [group_id, *options.security_group_ids],
            "key_name": options.key_name,
            "use_public_ip": options.use_public_ip,
        }
        step = "launching the scheduler"
        scheme = "tls" if spec.security else "tcp"
        placement, scheduler_ip = _launch_scheduler(aws, boot, plan, base, profiles["scheduler"])
        scheduler_address = f"{scheme}://{scheduler_ip}:{network.SCHEDULER_PORT}"
        # Same wave: the workers know the scheduler's address before it has booted.
        if spec.n_workers:
            step = f"launching {spec.n_workers} workers"
            worker_base = {
                **base,
                "ami": plan.amis["worker"],
                "root_device_name": plan.root_devices["worker"],
                "subnet_id": placement.subnet_id,
                "root_volume_gib": options.volume_gib("worker"),
                "instance_profile": profiles["worker"],
            }
            _launch_workers(aws, boot, worker_base, plan.types.worker, spec.n_workers, scheduler_address)
        # From now on the cluster's own liveness decides whether the claim is stale.
        _write_claim(aws, spec.name, ClaimLease.new().provisioned(), overwrite=True)
    except Exception as error:
        _delete_everything(aws, spec.name, own_roles=_own_roles(options))
        if isinstance(error, (ProvisionError, ClusterSpecError)):
            raise ProvisionError(f"{step} failed: {error}") from error
        raise ProvisionError(f"{step} failed: {type(error).__name__}: {error}") from error
    record = describe(spec.name, options)
    assert record is not None
    return record


@hookimpl
def cluster_started(record: ClusterRecord, options: AWSOptions) -> None:
    """Pin the packs the cluster's nodes built (under its build id), before any user code runs
    on them: later clusters' nodes fetch those instead of building."""
    build_id = record.backend_ids.get("build_id")
    if not build_id or not record.spec:
        return
    spec = ClusterSpec.model_validate(record.spec)
    software = _software(spec)
    if software.kind == "container":
        return
    aws = AWS(options)
    boot = dataclasses.replace(boot_software(software, node_requirements("boto3")), build_id=build_id)
    try:
        pinned = record_cluster_packs(boot, artifacts.ClientStore(aws, artifacts.bucket_name(aws)), PACK_MACHINES)
    except Exception as e:  # the cluster works; the next one builds again
        logger.warning("could not pin the environment packs of cluster %s: %s", record.name, e)
        return
    if pinned:
        logger.info("pinned the environment packs %s built by cluster %s", ", ".join(pinned), record.name)


def _launch_scheduler(aws: AWS, boot: _Boot, plan: _Plan, base: dict[str, Any], profile: str) -> tuple[Placement, str]:
    """Launch the scheduler at an address chosen in advance, in the first of ``plan.placements``
    where one of its types has capacity (more than one only with ``use_best_zone``); return
    where it went and its private address."""
    spec, options = boot.spec, boot.options
    failures = []
    for placement in plan.placements:
        scheduler_ip = network.free_private_address(aws.ec2, placement)
        request = launch.LaunchRequest(
            user_data=boot.script(boot.scheduler()),
            tags=boot.tags("scheduler"),
            private_ip=scheduler_ip,
            instance_profile=profile,
            ami=plan.amis["scheduler"],
            root_device_name=plan.root_devices["scheduler"],
            subnet_id=placement.subnet_id,
            root_volume_gib=options.volume_gib("scheduler"),
            **base,
        )
        try:
            launch.run_instances(aws.ec2, request, plan.types.scheduler, 1, spot=False)
            return placement, scheduler_ip
        except ProvisionError as e:  # no capacity for any candidate type here: the next zone
            failures.append(f"{placement.zone}: {e}")
            logger.info("no capacity for the scheduler of %s in %s: %s", spec.name, placement.zone, e)
    raise ProvisionError("; ".join(failures))


def _node_profiles(
    aws: AWS, spec: ClusterSpec, options: AWSOptions, boundary: str | None, kms_key_arn: str | None, build_id: str = ""
) -> dict[str, str]:
    """The instance profile of each node role: a pre-created one (``iam_instance_profile``, for
    both roles) or the backend's own per-role profiles, created now with ``boundary``."""
    if options.iam_instance_profile:
        return {role: options.iam_instance_profile for role in parameters.NODE_ROLES}
    assert boundary is not None, "the backend's own roles always get a boundary"
    return iam.create_node_profiles(aws, spec.name, _tags(spec, options), boundary, kms_key_arn, build_id)


def _read_spec(aws: AWS, name: str) -> dict[str, Any]:
    """The spec ``name`` was made from (a SecureString), or {} if there is none."""
    from botocore.exceptions import ClientError

    try:
        reply = aws.client("ssm").get_parameter(Name=parameters.spec_parameter(name), WithDecryption=True)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return {}
        raise ProvisionError(
            f"cannot read the spec of cluster {name!r} ({e}): describing a cluster needs ssm:GetParameter on "
            f"{parameters.spec_parameter(name)} and kms:Decrypt on its key"
        ) from e
    return json.loads(reply["Parameter"]["Value"])


_STATES = {
    "pending": ClusterState.starting,
    "running": ClusterState.running,
    "shutting-down": ClusterState.stopping,
    "stopping": ClusterState.stopping,
    "stopped": ClusterState.stopping,
    "terminated": ClusterState.stopped,
}


@hookimpl
def describe(name: str, options: AWSOptions) -> ClusterRecord | None:
    aws = AWS(options)
    instances = _instances(aws, name, LIVE_STATES + ["terminated"])
    if not instances:
        return None
    schedulers = [i for i in instances if _tag(i, TAG_ROLE) == "scheduler"]
    live_schedulers = [i for i in schedulers if i["State"]["Name"] != "terminated"]
    scheduler = (live_schedulers or schedulers or [None])[0]
    state = _STATES[scheduler["State"]["Name"]] if scheduler else ClusterState.stopped
    spec = _read_spec(aws, name)
    scheme = "tls" if spec.get("security") else "tcp"
    # With TLS, the node agent serves the dashboard over HTTPS with the scheduler's certificate.
    dashboard_scheme = "https" if spec.get("security") else "http"
    # One worker per instance, named after it by the node add-on (scale-down stops that machine).
    prefix = worker_name_prefix(name)
    workers = [
        WorkerRecord(name=f"{prefix}{i['InstanceId']}", backend_ids={"instance_id": i["InstanceId"]})
        for i in instances
        if _tag(i, TAG_ROLE) == "worker" and i["State"]["Name"] in ("pending", "running")
    ]
    return ClusterRecord(
        name=name,
        backend="aws",
        state=state,
        scheduler_address=_client_address(scheduler, network.SCHEDULER_PORT, scheme) if scheduler else None,
        dashboard_url=(_client_address(scheduler, network.DASHBOARD_PORT, dashboard_scheme) + "/status") if scheduler else None,
        workers=workers,
        created_at=(_tag(scheduler, TAG_CREATED) if scheduler else None) or datetime.now(timezone.utc),
        spec=spec,
        backend_ids={
            "region": aws.region,
            "scheduler_instance_id": scheduler["InstanceId"] if scheduler else None,
            "scheduler_private_ip": scheduler.get("PrivateIpAddress") if scheduler else None,
            "scheduler_subnet_id": scheduler.get("SubnetId") if scheduler else None,
            "local_code_sha256": _tag(scheduler, TAG_LOCAL_CODE) if scheduler else None,
            "build_id": _tag(scheduler, TAG_BUILD) if scheduler else None,
        },
    )


@hookimpl
def scale(record: ClusterRecord, options: AWSOptions, n_workers: int, retired: list[str], tls: ClusterTLS | None) -> ClusterRecord:
    # New workers read their TLS material from SSM, where provision put it: `tls` (the client's
    # part only) is not needed to start them.
    aws = AWS(options)
    by_name = {w.name: w.backend_ids["instance_id"] for w in record.workers}
    doomed = [by_name[n] for n in retired if n in by_name]
    if doomed:
        _terminate(aws, doomed)
    missing = n_workers - (len(record.workers) - len(doomed))
    if missing > 0:
        _add_workers(aws, record, options, missing)
    updated = describe(record.name, options)
    if updated is None:
        raise ProvisionError(f"cluster {record.name!r} disappeared while scaling")
    return updated


def _add_workers(aws: AWS, record: ClusterRecord, options: AWSOptions, count: int) -> None:
    """Launch ``count`` more workers into the cluster's own group and its scheduler's subnet
    (one zone), with its worker role, types and image."""
    spec = ClusterSpec.model_validate(record.spec)
    subnet_id = record.backend_ids.get("scheduler_subnet_id")
    placement = network.placement_of_subnet(aws.ec2, subnet_id) if subnet_id else network.find_placement(aws.ec2, options)
    tag_filter = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [record.name]}]
    group_ids = [g["GroupId"] for g in aws.ec2.describe_security_groups(Filters=tag_filter)["SecurityGroups"]]
    boot = _Boot(
        aws, spec, options, local_code_sha256=record.backend_ids.get("local_code_sha256"), build_id=record.backend_ids.get("build_id")
    )
    types = _instance_types(aws, spec, options, boot.software)
    ami = _resolve_ami(aws, options, types.worker_arch)
    base = {
        "ami": ami,
        "root_device_name": _root_device(aws, spec, ami),
        "subnet_id": placement.subnet_id,
        "security_group_ids": [*group_ids, *options.security_group_ids],
        "instance_profile": options.iam_instance_profile or iam.node_role_name(aws, record.name, "worker"),
        "key_name": options.key_name,
        "root_volume_gib": options.volume_gib("worker"),
        "use_public_ip": options.use_public_ip,
    }
    scheme = "tls" if spec.security else "tcp"
    # Workers reach the scheduler at its private address, whatever the client connects to.
    private = f"{scheme}://{record.backend_ids['scheduler_private_ip']}:{network.SCHEDULER_PORT}"
    _launch_workers(aws, boot, base, types.worker, count, private)


def _terminate(aws: AWS, instance_ids: list[str], attempts: int = 5) -> None:
    """Terminate ``instance_ids``. An instance that is terminating on its own at the same moment
    (its node powered off) can make the call fail on its network interface, already gone: the
    call is made again for those still not terminated."""
    from botocore.exceptions import ClientError

    for attempt in range(attempts):
        try:
            aws.ec2.terminate_instances(InstanceIds=instance_ids)
            return
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "InvalidNetworkInterfaceID.NotFound" or attempt == attempts - 1:
                raise
        time.sleep(0.5)
        reply = aws.ec2.describe_instances(InstanceIds=instance_ids)
        instance_ids = [
            i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"] if i["State"]["Name"] not in ("shutting-down", "terminated")
        ]
        if not instance_ids:
            return


def _wait_terminated(aws: AWS, instance_ids: list[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while instance_ids and time.monotonic() < deadline:
        reservations = aws.ec2.describe_instances(InstanceIds=instance_ids)["Reservations"]
        states = [i["State"]["Name"] for r in reservations for i in r["Instances"]]
        if all(s == "terminated" for s in states):
            return
        time.sleep(1)
    if instance_ids:
        raise ProvisionError(f"instances {instance_ids} did not terminate within {timeout:g}s")


def _delete_everything(aws: AWS, name: str, own_roles: bool = True) -> list[str]:
    """Terminate every instance of ``name`` and delete everything else tagged with it.

    The node roles are deleted only with ``own_roles``: a cluster whose nodes use a pre-created
    ``iam_instance_profile`` has none of the backend's, and its client may not touch IAM.
    """
    from botocore.exceptions import ClientError

    deleted = []
    ids = [i["InstanceId"] for i in _instances(aws, name)]
    if ids:
        _terminate(aws, ids)
        _wait_terminated(aws, ids)
        deleted.append(f"terminated {len(ids)} instance(s) of {name!r}")
    tag_filter = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [name]}]
    for template in aws.ec2.describe_launch_templates(Filters=tag_filter).get("LaunchTemplates", []):
        aws.ec2.delete_launch_template(LaunchTemplateId=template["LaunchTemplateId"])
        deleted.append(f"deleted launch template {template['LaunchTemplateName']}")
    for group in aws.ec2.describe_security_groups(Filters=tag_filter)["SecurityGroups"]:
        for attempt in range(30):  # interfaces of terminated instances take a moment to go
            try:
                aws.ec2.delete_security_group(GroupId=group["GroupId"])
                deleted.append(f"deleted security group {group['GroupId']}")
                break
            except ClientError as e:
                if e.response["Error"]["Code"] != "DependencyViolation" or attempt == 29:
                    raise
                time.sleep(2)
    if parameters.delete_secrets(aws, name):
        deleted.append(f"deleted secret parameters of {name!r}")
    if own_roles and iam.delete_node_profiles(aws, name):
        deleted.append(f"deleted node roles of {name!r}")
    ssm = aws.client("ssm")
    for parameter in (parameters.spec_parameter(name), parameters.claim_parameter(name)):
        try:
            ssm.delete_parameter(Name=parameter)
        except ClientError:
            pass
    return deleted


@hookimpl
def teardown(record: ClusterRecord, options: AWSOptions) -> ClusterRecord:
    aws = AWS(options)
    _delete_everything(aws, record.name, own_roles=_own_roles(options, record))
    left = _instances(aws, record.name)
    groups = aws.ec2.describe_security_groups(Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [record.name]}])["SecurityGroups"]
    if left or groups:
        raise ProvisionError(f"teardown of {record.name!r} left {len(left)} instance(s) and {len(groups)} security group(s)")
    return record.model_copy(update={"state": ClusterState.stopped, "workers": []})


@hookimpl
def list_clusters(options: AWSOptions) -> list[ClusterRecord]:
    aws = AWS(options)
    names = sorted({_tag(i, TAG_CLUSTER) for i in _instances(aws, None)} - {None})
    records = (describe(name, options) for name in names)
    return [r for r in records if r is not None]


@hookimpl
def logs(record: ClusterRecord, options: AWSOptions, tail: int | None) -> dict[str, str]:
    """Each node's log as its agent last uploaded it, by instance id: they outlive the nodes."""
    aws = AWS(options)
    return artifacts.read_logs(aws, artifacts.bucket_name(aws), record.name, tail)


# -- gc -----------------------------------------------------------------------------------------
def _past_lifetime(record: ClusterRecord | None, scheduler: dict) -> bool:
    """Whether a cluster with a live scheduler has outlived its lifetime cap by more than
    ``EXPIRY_GRACE``: its node should have ended it (a frozen machine), so gc may.

    The record's spec and creation time decide; without a readable spec, the scheduler's
    expires-at tag (written with the same cap at launch).
    """
    if record is not None and record.spec:
        return past_lifetime(record)
    expires = _tag(scheduler, TAG_EXPIRES)
    if not expires or expires == "never":
        return False
    try:
        deadline = datetime.fromisoformat(expires)
    except ValueError:
        return False
    return datetime.now(timezone.utc) > deadline + timedelta(seconds=EXPIRY_GRACE)


def _ended_or_outlived(name: str, instances: list[dict], options: AWSOptions) -> bool:
    """The gc rule for a cluster that still has instances: its scheduler ended, or it is past
    its lifetime cap (see :func:`_past_lifetime`). Never a live cluster within its lifetime."""
    if not _scheduler_live(instances):
        return True
    scheduler = next(i for i in instances if _tag(i, TAG_ROLE) == "scheduler" and i["State"]["Name"] in ("pending", "running"))
    return _past_lifetime(describe(name, options), scheduler)


@hookimpl
def gc(options: AWSOptions) -> list[str]:
    """Delete what clusters without a live scheduler left behind, and clusters past their
    lifetime cap by more than ``EXPIRY_GRACE``.

    Leftovers are found by their instances, their security groups and their SSM parameters (a
    cluster's secrets and spec outlive its last instance and may outlive its group too); a
    cluster that some process is creating right now (a live claim) is left alone, and so is a
    live cluster within its lifetime.
    """
    aws = AWS(options)
    own_roles = _own_roles(options)
    removed: list[str] = []
    by_cluster: dict[str, list[dict]] = {}
    for instance in _instances(aws, None):
        by_cluster.setdefault(_tag(instance, TAG_CLUSTER) or "", []).append(instance)
    by_cluster.pop("", None)
    for name, instances in sorted(by_cluster.items()):
        if _ended_or_outlived(name, instances, options):
            removed += _delete_everything(aws, name, own_roles)
    groups = aws.ec2.describe_security_groups(Filters=[{"Name": "tag-key", "Values": [TAG_CLUSTER]}])["SecurityGroups"]
    without_instances = {_tag(g, TAG_CLUSTER) or "" for g in groups}
    without_instances |= parameters.clusters_with_parameters(aws)
    for name in sorted(without_instances - set(by_cluster) - {""}):
        if not _being_created(aws, name):
            removed += _delete_everything(aws, name, own_roles)
    return removed
