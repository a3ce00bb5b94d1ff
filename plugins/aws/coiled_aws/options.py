"""``backend_options`` of the AWS backend.

``coiled.Cluster(backend="aws", backend_options={...})`` is validated against :class:`AWSOptions`
by the core (``coiled_core.spec.validate_backend_options``) before anything is created: unknown
keys get a "did you mean" hint, bad values an error naming the option. Every option has a default,
so ``backend_options={}`` is valid; the defaults that depend on the caller's environment (region,
image, client address) are resolved at create time by the plugin, not here.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

#: Region used when neither ``region`` nor boto3's own resolution (AWS_REGION,
#: AWS_DEFAULT_REGION, the profile's ``region``) gives one.
DEFAULT_REGION = "us-east-1"

SpotPolicy = Literal["on-demand", "spot", "spot_with_fallback"]

_ZONE = re.compile(r"^([a-z]{2}(-[a-z]+)+-\d+)[a-z]$")  # us-east-1a
_KEY_ID = r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
_ALIAS = r"alias/[A-Za-z0-9/_-]{1,250}"
_KMS_ARN = re.compile(rf"^arn:aws[a-z-]*:kms:([a-z]{{2}}(?:-[a-z]+)+-\d+):\d{{12}}:(?:key/{_KEY_ID}|{_ALIAS})$")
_KMS_KEY = re.compile(rf"^(?:{_KEY_ID}|{_ALIAS})$")
#: arn:aws:iam::123456789012:instance-profile/optional/path/NAME
_PROFILE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:instance-profile/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,128})$")
_PROFILE_NAME = re.compile(r"^[\w+=,.@-]{1,128}$")
_POLICY_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:policy/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,128}$")
_POLICY_NAME = _PROFILE_NAME
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")  # m6i.xlarge, p6-b200.48xlarge
#: Google Cloud's names, for a hint when code written for GCP runs here.
_GCP_REGION = re.compile(r"^[a-z]+-[a-z]+\d+$")  # us-central1, europe-west4
_GCP_MACHINE_TYPE = re.compile(r"^[a-z][a-z0-9]*-(standard|highmem|highcpu|megamem|ultramem|custom|micro|small|medium)(-\d+.*)?$")
#: Tags go on IAM roles and SSM parameters too, which accept only these characters.
_TAG_CHARACTERS = set("_.:/=+-@ ")
#: Tags the backend puts on every resource (Name and coiled:*); EC2 allows 50 per resource.
RESERVED_TAGS = 7
MAX_TAGS = 50
#: Coiled's words for ``allow_ingress_from``.
INGRESS_ME = "me"
INGRESS_EVERYONE = "0.0.0.0/0"
_SPOT_SPELLINGS = {
    "on-demand": "on-demand",
    "on_demand": "on-demand",
    "ondemand": "on-demand",
    "spot": "spot",
    "spot_with_fallback": "spot_with_fallback",
    "spot-with-fallback": "spot_with_fallback",
}


@functools.lru_cache(maxsize=1)
def known_regions() -> frozenset[str]:
    """Every region botocore knows EC2 in, in every partition (read from its shipped data: no call)."""
    import botocore.session  # imported here: `import coiled` must not import botocore

    session = botocore.session.get_session()
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("ec2", partition))
    return frozenset(regions)


def region_error(value: str) -> str | None:
    """Why ``value`` is not an AWS region, or None if it is one."""
    regions = known_regions()
    if value in regions:
        return None
    hint = " (that is a Google Cloud region name)" if _GCP_REGION.fullmatch(value) else ""
    close = difflib.get_close_matches(value, sorted(regions), n=3, cutoff=0.5)
    suggestion = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; e.g. 'us-east-1' or 'eu-west-2'"
    return (
        f"{value!r} is not an AWS region{hint}{suggestion} (regions this boto3 knows; a region newer than "
        "it needs a newer boto3)"
    )


def instance_type_name_error(name: str) -> str | None:
    """Why ``name`` cannot be an EC2 instance type name, or None if it can."""
    if _INSTANCE_TYPE.fullmatch(name):
        return None
    hint = " (that is a Google Cloud machine type)" if _GCP_MACHINE_TYPE.fullmatch(name) else ""
    return f"{name!r} is not an EC2 instance type name{hint}; expected e.g. 'm6i.xlarge'"


def _instance_type_list(v: Any) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = [v]
    names = [str(t).strip().lower() for t in v]
    if not names:
        raise ValueError("must name at least one instance type (e.g. ['m6i.xlarge']), or be left out")
    for name in names:
        error = instance_type_name_error(name)
        if error:
            raise ValueError(error)
    return list(dict.fromkeys(names))


def _volume_gib(v: int | None) -> int | None:
    if v is None:
        return None
    if v < 8:
        raise ValueError(f"must be at least 8 (GiB) to hold the image and the software environment, not {v}")
    if v > 16384:
        raise ValueError(f"must be at most 16384 (GiB, the largest EBS volume), not {v}")
    return v


def _resource_id(value: str | None, prefix: str, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(rf"{prefix}-[0-9a-f]+", value.strip()):
        raise ValueError(f"{value!r} is not a {what} id; expected '{prefix}-' followed by hex digits")
    return value.strip()


class AWSOptions(BaseModel):
    """Options for ``coiled.Cluster(backend="aws", backend_options={...})``.

    All of them are optional. Networking defaults to the region's default VPC and one of its
    subnets; the image to a current public image; instance types to the cheapest that fit
    ``worker_cpu``/``worker_memory``/``worker_gpu`` (and the scheduler's values).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    region: str | None = Field(
        default=None,
        alias="region_name",
        validation_alias=AliasChoices("region", "region_name"),
        description=(
            "AWS region, e.g. 'us-east-2' (also accepted as 'region_name'). Default: the region "
            "of 'zone' when a zone name is given, else boto3's own resolution (AWS_REGION, "
            f"AWS_DEFAULT_REGION, the profile's region), else '{DEFAULT_REGION}'."
        ),
    )
    zone: str | None = Field(
        default=None,
        description=(
            "Availability zone by name, e.g. 'us-east-2a'; sets the region when 'region' is not "
            "given. Default: any zone of the region (the subnet's zone when 'subnet_id' is given)."
        ),
    )
    vpc_id: str | None = Field(
        default=None,
        description="VPC to launch into ('vpc-...'). Default: the region's default VPC.",
    )
    subnet_id: str | None = Field(
        default=None,
        description=(
            "Subnet to launch into ('subnet-...'). Default: a default subnet of the VPC (in "
            "'zone' when given)."
        ),
    )
    security_group_ids: list[str] = Field(
        default_factory=list,
        description=(
            "Extra security groups ('sg-...') attached to every instance, in addition to the "
            "cluster's own group (which admits 'allow_ingress_from' and the cluster itself)."
        ),
    )
    ami: str | None = Field(
        default=None,
        description=(
            "Machine image: an AMI id ('ami-...') or an SSM parameter ('resolve:ssm:/aws/...'). "
            "Default: a current public image for the instance architecture, resolved at create "
            "time through the SSM public parameters."
        ),
    )
    instance_types: list[str] | None = Field(
        default=None,
        description=(
            "Worker instance types, in order of preference (e.g. ['m6i.xlarge', 'm7i.xlarge']; "
            "the keyword worker_vm_types sets it), instead of choosing from worker_cpu/"
            "worker_memory/worker_gpu. Default: the cheapest current types that fit."
        ),
    )
    scheduler_instance_types: list[str] | None = Field(
        default=None,
        description=(
            "Scheduler instance types, in order of preference (the keyword scheduler_vm_types "
            "sets it), instead of choosing from scheduler_cpu/scheduler_memory. Default: the "
            "cheapest current types that fit."
        ),
    )
    arm: bool | None = Field(
        default=None,
        description=(
            "True: arm64 (Graviton) instance types and an arm64 image; False: x86_64 (the keyword "
            "arm sets it). Default: arm64 when the named instance types (or the software "
            "environment) are arm64, else x86_64."
        ),
    )
    scheduler_gpu: bool | None = Field(
        default=None,
        description=(
            "Give the scheduler one GPU (the keyword scheduler_gpu sets it), so it can deserialise "
            "GPU objects. Default: as on Coiled, a GPU when the workers have one (worker_gpu), "
            "else none. Like worker_gpu, the image must bring the GPU driver."
        ),
    )
    spot_policy: SpotPolicy = Field(
        default="on-demand",
        description=(
            "'on-demand' (default), 'spot' (spot only; fails if none is available) or "
            "'spot_with_fallback' (spot, and on-demand for what spot cannot supply)."
        ),
    )
    key_name: str | None = Field(
        default=None,
        description="EC2 key pair to install on the instances, for SSH (see allow_ssh). Default: none.",
    )
    iam_instance_profile: str | None = Field(
        default=None,
        description=(
            "A pre-created instance profile (name or ARN) for every node, so that the client "
            "needs no IAM permission but iam:PassRole on its role; the backend never modifies or "
            "deletes it. Its role needs the node permissions in the README (and then scheduler "
            "and workers share them: workers can read the scheduler's key). Default: the "
            "backend's own least-privilege roles, one for the scheduler and one for the workers "
            "of each cluster, created with the cluster and deleted with it."
        ),
    )
    permissions_boundary: str | None = Field(
        default=None,
        description=(
            "Managed policy (name or ARN) attached as the permissions boundary of every node role "
            "the backend creates; the client policy in the README allows creating roles only with "
            "it. Default: 'coiled-node-boundary' in the account, created on first use if the "
            "caller may (else an administrator creates it once: python -m coiled_aws.iam)."
        ),
    )
    kms_key_id: str | None = Field(
        default=None,
        description=(
            "Customer-managed KMS key (key id, key ARN, 'alias/NAME' or alias ARN, in the "
            "cluster's region) that encrypts the cluster's secrets in SSM (TLS keys, environ, the "
            "spec). Its key policy decides who decrypts them: grant kms:Decrypt to the node roles "
            "(see the README). Default: the account's 'aws/ssm' key, with which anyone allowed to "
            "read the parameters decrypts them."
        ),
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="Extra tags put on every resource of the cluster (instances, volumes, groups).",
    )
    allow_ingress_from: str | None = Field(
        default=None,
        description=(
            "Network allowed to reach the scheduler and dashboard (and SSH, with allow_ssh): a "
            "CIDR such as '203.0.113.7/32' (a bare address means /32), 'me' (this client's "
            "public address, detected at create time) or 'everyone' ('0.0.0.0/0', used only "
            "when given). Default: 'me'."
        ),
    )
    allow_ssh: bool = Field(
        default=False,
        description=(
            "Open port 22 of every node to allow_ingress_from. Log in with the key pair of "
            "key_name, or without one through EC2 Instance Connect (the default image has it)."
        ),
    )
    use_best_zone: bool = Field(
        default=False,
        description=(
            "Let the cluster go to any zone of the region: when no candidate instance type has "
            "capacity for the scheduler in the first default subnet, try the next zone's. All "
            "nodes stay in the scheduler's zone (no cross-zone traffic). Not with zone or "
            "subnet_id, which fix the zone."
        ),
    )
    use_public_ip: bool = Field(
        default=True,
        description=(
            "Give instances public addresses and connect through them. False: private addresses "
            "only (the client must be inside the VPC or connected to it)."
        ),
    )
    root_volume_gib: int = Field(
        default=50,
        description="Size of each instance's root volume in GiB (at least 8), unless set per role below.",
    )
    worker_root_volume_gib: int | None = Field(
        default=None,
        description="Root volume of each worker in GiB (the keyword worker_disk_size sets it). Default: root_volume_gib.",
    )
    scheduler_root_volume_gib: int | None = Field(
        default=None,
        description="Root volume of the scheduler in GiB (the keyword scheduler_disk_size sets it). Default: root_volume_gib.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description=(
            "An EC2-compatible endpoint instead of AWS, e.g. the offline simulator "
            "('http://127.0.0.1:PORT'); also used for SSM, S3, IAM and STS."
        ),
    )

    def volume_gib(self, role: str) -> int:
        """The root volume size of a ``role`` ("scheduler" or "worker") node, in GiB."""
        per_role = self.scheduler_root_volume_gib if role == "scheduler" else self.worker_root_volume_gib
        return per_role or self.root_volume_gib

    def resolve_region(self, session: Any | None = None) -> str:
        """The region to use: ``region``, else the boto3 session's, else ``DEFAULT_REGION``.

        ``session`` is a ``boto3.session.Session`` (a fresh default one when None, which reads
        AWS_REGION, AWS_DEFAULT_REGION and the profile's configuration).
        """
        if self.region:
            return self.region
        if session is None:
            import boto3  # imported here: `import coiled` must not import boto3

            session = boto3.session.Session()
        return session.region_name or DEFAULT_REGION

    # -- validators -------------------------------------------------------------------------

    @field_validator("region")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().lower()
        error = region_error(v)
        if error:
            raise ValueError(error)
        return v

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().lower()
        if not _ZONE.fullmatch(v):
            raise ValueError(f"{v!r} is not an availability zone name; expected e.g. 'us-east-1a'")
        return v

    @field_validator("vpc_id")
    @classmethod
    def _vpc(cls, v: str | None) -> str | None:
        return _resource_id(v, "vpc", "VPC")

    @field_validator("subnet_id")
    @classmethod
    def _subnet(cls, v: str | None) -> str | None:
        return _resource_id(v, "subnet", "subnet")

    @field_validator("security_group_ids")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        ids = [_resource_id(g, "sg", "security group") for g in v]
        return list(dict.fromkeys(i for i in ids if i))

    @field_validator("ami")
    @classmethod
    def _ami(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if v.startswith("resolve:ssm:") and len(v) > len("resolve:ssm:"):
            return v
        return _resource_id(v, "ami", "machine image (AMI)")

    @field_validator("instance_types", "scheduler_instance_types", mode="before")
    @classmethod
    def _instance_types(cls, v: Any) -> list[str] | None:
        return _instance_type_list(v)

    @field_validator("spot_policy", mode="before")
    @classmethod
    def _spot_policy(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in _SPOT_SPELLINGS:
            return _SPOT_SPELLINGS[v.strip().lower()]
        raise ValueError(f"{v!r} is not a spot policy; use 'on-demand', 'spot' or 'spot_with_fallback'")

    @field_validator("key_name", "iam_instance_profile", "kms_key_id")
    @classmethod
    def _non_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty; leave it out for the default")
        return v.strip() if v is not None else None

    @field_validator("iam_instance_profile")
    @classmethod
    def _instance_profile(cls, v: str | None) -> str | None:
        """An ARN becomes the profile's name: EC2 is given names (unique in an account)."""
        if v is None:
            return None
        match = _PROFILE_ARN.fullmatch(v)
        if match:
            return match.group(1)
        if not _PROFILE_NAME.fullmatch(v):
            raise ValueError(
                f"{v!r} is not an instance profile name or ARN; expected e.g. 'dask-nodes' or "
                "'arn:aws:iam::123456789012:instance-profile/dask-nodes'"
            )
        return v

    @field_validator("permissions_boundary")
    @classmethod
    def _boundary(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if not (_POLICY_ARN.fullmatch(v) or _POLICY_NAME.fullmatch(v)):
            raise ValueError(
                f"{v!r} is not a managed policy name or ARN; expected e.g. 'coiled-node-boundary' or "
                "'arn:aws:iam::123456789012:policy/coiled-node-boundary'"
            )
        return v

    @field_validator("kms_key_id")
    @classmethod
    def _kms_key(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if v.startswith("alias/aws/") or ":alias/aws/" in v:
            raise ValueError(
                f"{v!r} is an AWS managed key, not a customer-managed one; leave kms_key_id out for the default 'aws/ssm' key"
            )
        if not (_KMS_KEY.fullmatch(v) or _KMS_ARN.fullmatch(v)):
            raise ValueError(
                f"{v!r} is not a KMS key; give a key id ('1234abcd-12ab-34cd-56ef-1234567890ab'), a key ARN "
                "('arn:aws:kms:us-east-1:123456789012:key/...'), an alias ('alias/coiled') or an alias ARN"
            )
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_TAGS - RESERVED_TAGS:
            raise ValueError(
                f"{len(v)} tags are too many: AWS allows {MAX_TAGS} per resource and the backend puts "
                f"{RESERVED_TAGS} of its own (Name and coiled:*), so give at most {MAX_TAGS - RESERVED_TAGS}"
            )
        for key, value in v.items():
            if not 1 <= len(key) <= 128:
                raise ValueError(f"tag key {key!r} must be 1 to 128 characters long")
            if key.lower().startswith("aws:"):
                raise ValueError(f"tag key {key!r} uses the reserved prefix 'aws:'")
            if key.lower().startswith("coiled:"):
                raise ValueError(f"tag key {key!r} uses the prefix 'coiled:', which the backend keeps for its own tags")
            if len(value) > 256:
                raise ValueError(f"the value of tag {key!r} is longer than 256 characters")
            for text, what in ((key, "key"), (value, "value")):
                bad = sorted({c for c in text if not (c.isalnum() or c.isspace() or c in _TAG_CHARACTERS)})
                if bad:
                    raise ValueError(
                        f"the {what} of tag {key!r} contains {''.join(bad)!r}; AWS tags (on IAM roles and SSM "
                        "parameters too) allow letters, digits, spaces and _ . : / = + - @"
                    )
        return v

    @field_validator("allow_ingress_from")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return None
        word = v.strip().lower()
        if word == INGRESS_ME:
            return INGRESS_ME
        if word == "everyone":
            return INGRESS_EVERYONE
        try:
            network = ipaddress.ip_network(v.strip(), strict=False)
        except ValueError:
            raise ValueError(
                f"{v!r} is not a network in CIDR notation, 'me' or 'everyone'; give e.g. '203.0.113.7/32' "
                "(one address), 'me' (this client's public address) or 'everyone' ('0.0.0.0/0')"
            ) from None
        return str(network)

    @field_validator("root_volume_gib", "worker_root_volume_gib", "scheduler_root_volume_gib")
    @classmethod
    def _root_volume(cls, v: int | None) -> int | None:
        return _volume_gib(v)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().rstrip("/")
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{v!r} is not an endpoint URL; expected e.g. 'http://127.0.0.1:5000'")
        return v

    @model_validator(mode="after")
    def _zone_in_region(self) -> AWSOptions:
        match = _ZONE.match(self.zone) if self.zone else None
        if match is not None:
            zone_region = match.group(1)
            if self.region is None:
                error = region_error(zone_region)
                if error:
                    raise ValueError(f"zone {self.zone!r} is in no AWS region: {error}")
                self.region = zone_region
            elif zone_region != self.region:
                raise ValueError(f"zone {self.zone!r} is not in region {self.region!r}")
        return self

    @model_validator(mode="after")
    def _kms_key_in_region(self) -> AWSOptions:
        """SSM encrypts only with a key of its own region."""
        match = _KMS_ARN.fullmatch(self.kms_key_id) if self.kms_key_id else None
        if match is not None and self.region is not None and match.group(1) != self.region:
            raise ValueError(
                f"kms_key_id {self.kms_key_id!r} is a key in {match.group(1)}, but the cluster is in {self.region!r}: "
                "SSM needs a key of the cluster's region"
            )
        return self
