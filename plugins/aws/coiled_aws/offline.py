"""Offline EC2: a simulated EC2 on this machine, so the AWS backend runs for real without a cloud.

Two parts, started and stopped together by :class:`OfflineEC2`:

* **The API**: moto in server mode on ``127.0.0.1`` (a free port). boto3 reaches it through
  ``endpoint_url``, or a child process through ``AWS_ENDPOINT_URL`` (see
  :meth:`OfflineEC2.environ`). EC2, SSM, S3, IAM and the rest of moto are served, behind a gate
  (see *Credentials*).
* **The runner**: a thread that polls ``DescribeInstances`` (every ``poll_interval`` seconds, in
  each region of ``regions``) and plays the part of the machines:

  - *Boot.* An instance seen ``running`` for the first time has its user data fetched
    (``DescribeInstanceAttribute userData``, gzip accepted as cloud-init does) and executed once
    (as cloud-init does: stopping and starting an instance does not rerun it) as a local process
    in its own session and process group: a script starting with ``#!`` through that
    interpreter, anything else through ``bash``. It runs in ``<workdir>/<instance-id>/`` with
    stdout and stderr in ``boot.log`` there, stdin from ``/dev/null``, no inherited file
    descriptors, and only this environment: :meth:`OfflineEC2.environ` (region set to the
    instance's), ``PATH``, ``HOME`` and a few locale/pip variables from the parent (see
    ``inherit_env``), ``extra_env``, and

    - ``COILED_OFFLINE=1``: the script runs on a simulated instance;
    - ``COILED_INSTANCE_ID``: the EC2 instance id;
    - ``COILED_PRIVATE_IP``: its private address as moto reports it (never contact it);
    - ``COILED_NODE_HOST``: its loopback address, :func:`loopback_address` of the private one,
      to bind to and advertise;
    - ``COILED_ENV_CACHE``: a directory shared by all instances for software environments built
      from the same spec (see below; absent with ``env_cache=False``);
    - ``COILED_INSTANCE_DIR`` and ``COILED_NODE_ROOT``: the instance's work directory (also the
      working directory), where the boot script keeps its files instead of ``/opt/coiled``;
    - ``TMPDIR``: ``tmp`` in that directory, the instance's own temporary directory.

    ``PATH`` starts with a directory holding ``poweroff``, ``shutdown`` and ``halt`` commands
    that power the simulated instance off (they touch ``$COILED_INSTANCE_DIR/poweroff`` and end
    their process group), so a boot script written for a real machine powers the simulated one
    off instead of this one. Call them by name, not as ``/sbin/shutdown`` or through ``sudo``.
  - *Power off.* When the script's process exits (the machine powers off), whatever is left of
    its process group and descendants is killed and the instance is terminated through the API,
    whatever its shutdown behaviour says: the backend launches with
    ``InstanceInitiatedShutdownBehavior=terminate``, and moto reports ``stop`` for instances of
    an instant fleet whatever the launch template says.
  - *Termination.* When the API reports the instance ``shutting-down``, ``terminated``,
    ``stopping`` or ``stopped`` (someone called TerminateInstances or StopInstances), or no longer
    lists it, every process of that instance is sent SIGTERM, then SIGKILL after ``kill_grace``
    seconds.
  - *Capacity.* At most ``max_instances`` instances run at once (default
    :func:`default_max_instances`). One more is refused: its script is not run, a line saying why
    goes to the log (``coiled_aws.offline`` logger), to its ``boot.log``, to :attr:`OfflineEC2.errors`
    and to the instance's ``coiled-offline:error`` tag, and the instance is terminated through the
    API, as a cloud out of capacity would do.

Credentials. Every local user can reach the port, and what the runner boots runs as the
simulator's owner, so the API is not open. Each run makes its own account and access key
(:attr:`OfflineEC2.credentials`, random, from :mod:`secrets`; :meth:`OfflineEC2.environ` hands
them out). In front of moto, a gate answers only requests signed (Signature V4 in the
``Authorization`` header, within 15 minutes of now) with the secret of a key this run made, and
acts as that key's account; it refuses unsigned and presigned (query-string) requests and moto's
own ``/moto-api`` (which could reset the state or turn moto's own checks off) to every caller.
The runner boots only instances of the run's own account. :meth:`OfflineEC2.add_account` makes
more accounts, each with a key, for tests that need a second owner (a bucket another account
took); their instances never boot. What this guarantees: without this run's secret, no one can
get a process started, nor read or change the simulated cloud. It does not hide the secret from
whoever can read this user's process environments (the user, root).

The gate also plays one S3 check moto skips: a request with ``x-amz-expected-bucket-owner``
(boto3's ``ExpectedBucketOwner``) for a bucket another account owns is refused with
``AccessDenied``, as S3 does. Bucket requests without it are listed in
:attr:`OfflineEC2.s3_requests_without_expected_owner` (CreateBucket cannot carry it).

Addresses. moto hands out private addresses (10.x, or 172.x inside a VPC) that lead nowhere
and must never be contacted. Each simulated instance owns the loopback address
:func:`loopback_address` of its private address (``10.1.2.3`` -> ``127.1.2.3``); every address of
an instance (private, public, DNS name) must be mapped to it by whoever connects. Because every
instance has its own address, fixed ports (8786, 8787) do not collide. Linux routes all of
127.0.0.0/8 to the loopback interface; macOS only 127.0.0.1 unless aliases are added.
``DASK_COILED__LOOPBACK_ADDRESSES=true`` in :meth:`OfflineEC2.environ` tells coiled to do this
mapping.

Shared environment builds. ``COILED_ENV_CACHE`` (the ``env_cache`` argument, default
``<workdir>/env-cache``) is one directory for all instances: a boot script keeps a software
environment there under the hash of its spec and reuses it, instead of building one per
instance. Instances boot concurrently, so a script must serialise builds of one key itself, for
example with ``flock "$COILED_ENV_CACHE/<hash>.lock"``.

Process hygiene. Every process started carries ``COILED_OFFLINE_RUNNER`` (pid and start time of
the runner's process plus a random token) in its environment. :meth:`OfflineEC2.stop` kills every
such process of this runner. It never touches another run's processes: if this process dies
without stopping (SIGKILL), its own watchdog
(:func:`coiled_core.testing.noderunner.start_watchdog`) ends exactly its instances' processes.

Known moto (5.2) gaps this relies on or works around:

* State is per Python process: only one :class:`OfflineEC2` may run in a process at a time, it
  resets moto's state when it starts, and ``moto.mock_aws`` must not be used in the same process
  while it runs (it resets the same state). ``MOTO_ACCOUNT_ID`` must not be set: moto would put
  every request in that account, whoever signed it.
* ``ExpectedBucketOwner`` is ignored by moto; the gate checks it (above).
* Instances are ``running`` at the first describe (``pending`` only in RunInstances' reply).
* Private addresses are random 10.x addresses unless a subnet forces its range; two instances
  could collide in their last three octets (about one in 16 million): an instance whose loopback
  address is taken by a running one is refused with a clear error.
* Instant-fleet instances report shutdown behaviour ``stop``; instances from a launch template do
  not get its instance profile or shutdown behaviour. The runner terminates on power-off anyway.
* Pagination tokens are ignored (every page is the whole list).
* Invalid AMIs and instance types are accepted (left so: ``MOTO_ENABLE_AMI_VALIDATION`` and
  ``MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION`` are not set).
* There is no instance metadata service (169.254.169.254): scripts use the ``COILED_*``
  variables above.
* moto creates boto3 sessions while it loads: an ``AWS_PROFILE`` naming a profile that does not
  exist breaks it (HTTP 500). The command line drops it; a library user unsets it.

Usage::

    with OfflineEC2(regions=["us-east-1"]) as ec2:
        client = ec2.client("ec2")         # signed with this run's key
        ...
        os.environ.update(ec2.environ())   # or pass it to a child process

For users: ``python -m coiled_aws.offline`` starts it, prints the variables to export, and runs
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import gzip
import hashlib
import hmac
import io
import json
import logging
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

# The address rule is the project's, shared with the node agent and the client:
# ``A.B.C.D`` -> ``127.B.C.D``, unique within one VPC (a VPC's CIDR is at most a /16, so its
# addresses share their first octet and differ in the last three). Re-exported here.
from coiled_core.backend import loopback_address
from coiled_core.testing import noderunner

__all__ = [
    "Credentials",
    "OfflineEC2",
    "OfflineInstance",
    "default_max_instances",
    "loopback_address",
    "main",
]

logger = logging.getLogger(__name__)

#: Environment variable marking every process the runner started: "<pid>:<create time>:<token>".
RUNNER_ENV = "COILED_OFFLINE_RUNNER"
#: Tag set on an instance the runner refused to boot, with the reason.
ERROR_TAG = "coiled-offline:error"
#: Variables copied from the parent's environment into each instance's, when set.
INHERIT_ENV: tuple[str, ...] = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_NO_INDEX",
    "PIP_CONFIG_FILE",
    # uv (the boot script builds environments with it) and the certificates both tools trust.
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_CACHE_DIR",
    "UV_NATIVE_TLS",
    "UV_PYTHON_INSTALL_DIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    # The proof that a stand-in runs, without which the offline switches are refused.
    "COILED_STANDIN",
)
#: API states in which an instance's processes must not run.
_DOWN_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
_MIB = 1024 * 1024
#: Memory a simulated instance is budgeted (a node agent with a scheduler or a worker).
INSTANCE_MEMORY = 512 * _MIB

_POWEROFF_SHIM = """#!/bin/sh
# Offline EC2: power off this simulated instance, not the machine. The runner sees the file and
# kills every process of the instance; killing our own process group makes it quicker.
echo "offline EC2: $(basename "$0") $*: powering off instance $COILED_INSTANCE_ID" >&2
: > "$COILED_INSTANCE_DIR/poweroff"
kill -TERM 0
"""


@dataclass(frozen=True)
class Credentials:
    """The access key of one simulated account, made afresh for each run of a simulator.

    The simulator answers only requests signed (AWS Signature V4) with the secret of a key it
    made, and acts as that key's account; see :class:`OfflineEC2`.
    """

    account_id: str
    access_key_id: str
    secret_access_key: str = field(repr=False)

    @classmethod
    def generate(cls) -> Credentials:
        """A new random account id (12 digits) and access key, from :mod:`secrets`."""
        account_id = str(10**11 + secrets.randbelow(9 * 10**11))
        key_id = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
        return cls(account_id, key_id, secrets.token_urlsafe(30))


def default_max_instances() -> int:
    """How many simulated instances this machine holds by default.

    ``max(8, min(4 * cpu_count, total memory / 512 MiB))``: a simulated instance runs a node agent
    and one Dask process, mostly idle in tests; memory is the real limit.
    """
    cpus = os.cpu_count() or 1
    memory = psutil.virtual_memory().total
    return max(8, min(4 * cpus, memory // INSTANCE_MEMORY))


@dataclass
class OfflineInstance:
    """What the runner knows of one simulated instance.

    ``status`` is one of ``running`` (its script runs), ``powered-off`` (the script exited; the
    instance was terminated), ``stopped`` (terminated or stopped through the API; its processes
    were killed), ``refused`` (not booted, see ``error``), ``no-user-data`` (nothing to run; left
    as it is) or ``stopped-by-runner`` (killed by :meth:`OfflineEC2.stop`).
    """

    instance_id: str
    region: str
    private_ip: str
    node_host: str
    directory: Path
    status: str = "running"
    pid: int | None = None
    returncode: int | None = None
    error: str | None = None

    @property
    def log_path(self) -> Path:
        """``boot.log``: the script's stdout and stderr, and the runner's notes."""
        return self.directory / "boot.log"

    def log(self) -> str:
        """The instance's ``boot.log`` so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class _Running:
    """A booted instance's process: the group leader and every descendant seen so far."""

    instance: OfflineInstance
    popen: subprocess.Popen
    seen: dict[int, psutil.Process] = field(default_factory=dict)


class OfflineEC2:
    """moto's EC2 on 127.0.0.1 plus a runner that boots each instance's user data locally.

    Parameters
    ----------
    regions:
        Regions whose instances are booted (default ``["us-east-1"]``). The first is
        ``AWS_DEFAULT_REGION`` in :meth:`environ`. Instances in other regions exist in the API
        but never boot.
    max_instances:
        Most instances running at once; more are refused and terminated. Default
        :func:`default_max_instances`.
    workdir:
        Where each instance's directory and log go; kept after :meth:`stop` for the logs.
        Default: a new temporary directory.
    env_cache:
        ``COILED_ENV_CACHE`` for the instances; default ``<workdir>/env-cache``. Give a lasting
        directory to reuse environment builds across runs. ``False``: no shared cache, each
        instance keeps its environments in its own directory, as real machines do (the
        environment packs in the artifact bucket are then what spares the builds).
    poll_interval:
        Seconds between two looks at the API.
    kill_grace:
        Seconds between SIGTERM and SIGKILL when an instance's processes are killed.
    extra_env:
        More environment variables for every instance.
    inherit_env:
        Names of variables copied from this process's environment, when set.
    run_scripts:
        False serves the API only (no instance boots), e.g. to count API calls.
    reset:
        Reset moto's (process-wide) state at start, for a fresh, empty cloud.
    """

    _active: OfflineEC2 | None = None
    _active_lock = threading.Lock()

    def __init__(
        self,
        regions: Sequence[str] = ("us-east-1",),
        *,
        max_instances: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        env_cache: str | os.PathLike[str] | None | bool = None,
        poll_interval: float = 0.2,
        kill_grace: float = 3.0,
        extra_env: Mapping[str, str] | None = None,
        inherit_env: Iterable[str] = INHERIT_ENV,
        run_scripts: bool = True,
        reset: bool = True,
    ) -> None:
        if isinstance(regions, str):
            regions = [regions]
        if not regions:
            raise ValueError("OfflineEC2 needs at least one region")
        self.regions: list[str] = list(regions)
        self.max_instances: int = max_instances if max_instances is not None else default_max_instances()
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self.shared_env_cache = env_cache is not False
        self._env_cache_arg = Path(env_cache) if env_cache not in (None, False, True) else None
        self.poll_interval = poll_interval
        self.kill_grace = kill_grace
        self.extra_env: dict[str, str] = dict(extra_env or {})
        self.inherit_env: tuple[str, ...] = tuple(inherit_env)
        self.run_scripts = run_scripts
        self.reset = reset
        #: Clear messages, one per refused or failed instance ("<instance-id>: <why>").
        self.errors: list[str] = []
        #: S3 bucket requests that did not say which account must own the bucket
        #: (``ExpectedBucketOwner``), as "METHOD /path (account ...)"; CreateBucket is not listed.
        self.s3_requests_without_expected_owner: list[str] = []
        self._credentials: Credentials | None = None
        self._keys: dict[str, Credentials] = {}  # every account's key, by access key id

        self.workdir: Path | None = None
        self.env_cache: Path | None = None
        self._server: Any = None
        self._endpoint_url: str | None = None
        self._marker = ""
        self._watchdog: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self._instances: dict[str, OfflineInstance] = {}
        self._running: dict[str, _Running] = {}
        self._to_terminate: dict[str, str] = {}  # instance id -> region
        self._killers: list[threading.Thread] = []
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

    # ----------------------------------------------------------------------------------- API

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the moto server (after :meth:`start`)."""
        if self._endpoint_url is None:
            raise RuntimeError("OfflineEC2 is not started")
        return self._endpoint_url

    @property
    def credentials(self) -> Credentials:
        """This run's own account and key (after :meth:`start`): the only account whose
        instances boot. A new run makes new ones."""
        if self._credentials is None:
            raise RuntimeError("OfflineEC2 is not started")
        return self._credentials

    def add_account(self) -> Credentials:
        """Another simulated account, with a key of its own, for this run (after :meth:`start`).

        Requests signed with it act in that account: its buckets, its instances. Its instances
        never boot. Tests use one to own a bucket that the simulator's account must not trust.
        """
        credentials = Credentials.generate()
        with self._lock:
            self._keys[credentials.access_key_id] = credentials
        return credentials

    def environ(self) -> dict[str, str]:
        """Environment variables that point a client (boto3, coiled, a child process) here,
        with this run's credentials (:attr:`credentials`)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_access_key,
            "AWS_DEFAULT_REGION": self.regions[0],
            "DASK_COILED__LOOPBACK_ADDRESSES": "true",
            **(self._standin.environ() if getattr(self, "_standin", None) else {}),
            # Every request of a process that can import it is held to botocore's model,
            # constraints included (coiled_aws.testing.validation).
            "BOTOCORE_EXPERIMENTAL__PLUGINS": _with_validation(os.environ.get("BOTOCORE_EXPERIMENTAL__PLUGINS", "")),
        }

    @property
    def instances(self) -> dict[str, OfflineInstance]:
        """Every instance the runner has booted or refused, by id (a snapshot)."""
        with self._lock:
            return dict(self._instances)

    def client(self, service: str = "ec2", region: str | None = None, credentials: Credentials | None = None) -> Any:
        """A boto3 client for this endpoint, with this run's credentials (or ``credentials``,
        say another account's from :meth:`add_account`)."""
        import boto3
        import botocore.session

        # A profile named by AWS_PROFILE in the user's shell must not matter (nor break, if absent).
        botocore_session = botocore.session.Session(session_vars={"profile": (None, None, None, None)})
        return boto3.session.Session(
            botocore_session=botocore_session,
            aws_access_key_id=(credentials or self.credentials).access_key_id,
            aws_secret_access_key=(credentials or self.credentials).secret_access_key,
            region_name=region or self.regions[0],
        ).client(service, endpoint_url=self.endpoint_url)

    def __enter__(self) -> OfflineEC2:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------- start / stop

    def start(self) -> OfflineEC2:
        """Start the moto server on 127.0.0.1 and the runner. One per process at a time."""
        with OfflineEC2._active_lock:
            if self._started:
                return self
            if OfflineEC2._active is not None:
                raise RuntimeError(
                    "an OfflineEC2 already runs in this process (moto's state is per process): "
                    "stop it first or share it"
                )
            OfflineEC2._active = self
            self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from coiled_core.testing.standin import StandInProof

        self._standin = StandInProof().create()
        self._stop_event.clear()  # started again after a stop
        if self._workdir_arg is not None:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="coiled-offline-ec2-"))
        self.env_cache = self._env_cache_arg or self.workdir / "env-cache"
        self.env_cache.mkdir(parents=True, exist_ok=True)
        bin_dir = self.workdir / "bin"
        bin_dir.mkdir(exist_ok=True)
        # The simulated machine image has uv, as the boot script prefers (it would pip-install it).
        uv = shutil.which("uv") or shutil.which("uv", path=os.path.dirname(sys.executable))
        if uv and not (bin_dir / "uv").exists():
            (bin_dir / "uv").symlink_to(uv)
        for name in ("poweroff", "shutdown", "halt"):
            shim = bin_dir / name
            shim.write_text(_POWEROFF_SHIM)
            shim.chmod(0o755)
        me = psutil.Process()
        self._marker = f"{me.pid}:{me.create_time():.3f}:{uuid.uuid4().hex}"
        self._watchdog = noderunner.start_watchdog(self._marker, self.kill_grace)
        if "MOTO_ACCOUNT_ID" in os.environ:
            # moto would put every request in that account, whoever signed it.
            raise RuntimeError("unset MOTO_ACCOUNT_ID: the offline simulator keeps its accounts apart")
        self._credentials = Credentials.generate()
        with self._lock:
            self._keys = {self._credentials.access_key_id: self._credentials}
        if self.reset:
            # In this process: the gate refuses /moto-api to every caller.
            from moto.moto_api._internal.models import moto_api_backend

            moto_api_backend.reset()
        self._server = _quiet_moto_server(lambda app: _Gate(app, self._keys, self.s3_requests_without_expected_owner))
        self._server.start()
        host, port = self._server.get_host_and_port()
        self._endpoint_url = f"http://{host}:{port}"
        atexit.register(self.stop)
        if self.run_scripts:
            self._thread = threading.Thread(target=self._run, name="offline-ec2-runner", daemon=True)
            self._thread.start()
        logger.info(
            "offline EC2 serving %s (regions %s), instances in %s",
            self._endpoint_url,
            ", ".join(self.regions),
            self.workdir,
        )

    def stop(self) -> None:
        """Kill every process started, stop the runner and the moto server. Idempotent."""
        with OfflineEC2._active_lock:
            if not self._started:
                return
            self._started = False
        try:
            if getattr(self, "_standin", None) is not None:
                self._standin.remove()
            self._stop_event.set()
            if self._thread is not None:
                self._thread.join()
                self._thread = None
            with self._lock:
                running = list(self._running.values())
                self._running.clear()
            killers = [
                threading.Thread(target=self._kill, args=(r, "offline EC2 stopped"), daemon=True) for r in running
            ]
            for r in running:
                r.instance.status = "stopped-by-runner"
            for t in killers:
                t.start()
            for t in killers + self._killers:
                t.join()
            self._killers.clear()
            if self._marker:
                _kill_processes(_marked_processes(lambda value: value == self._marker), self.kill_grace)
            if self._watchdog is not None:
                self._watchdog.terminate()  # nothing left for it to end
                self._watchdog.wait(10)
                self._watchdog = None
            if self._server is not None:
                self._server.stop()
                self._server = None
            atexit.unregister(self.stop)
        finally:
            with OfflineEC2._active_lock:
                if OfflineEC2._active is self:
                    OfflineEC2._active = None

    # ------------------------------------------------------------------------------ runner

    def _run(self) -> None:
        clients = {region: self.client("ec2", region) for region in self.regions}
        last_scan = 0.0
        while not self._stop_event.is_set():
            try:
                self._tick(clients)
                if self._running and time.monotonic() - last_scan > 1.0:
                    last_scan = time.monotonic()
                    self._remember_descendants()
            except Exception:  # the runner must outlive any one bad reply
                if self._stop_event.is_set():
                    break
                logger.exception("offline EC2 runner")
            self._stop_event.wait(self.poll_interval)

    def _tick(self, clients: Mapping[str, Any]) -> None:
        listed: dict[str, dict[str, Any]] = {}
        answered: set[str] = set()
        for region, ec2 in clients.items():
            try:
                for page in ec2.get_paginator("describe_instances").paginate():
                    for reservation in page.get("Reservations", []):
                        if reservation.get("OwnerId") != self.credentials.account_id:
                            continue  # only this run's own account boots
                        for inst in reservation.get("Instances", []):
                            listed[inst["InstanceId"]] = {**inst, "_region": region}
            except Exception as e:
                logger.warning("offline EC2: describe_instances in %s failed: %s", region, e)
                continue
            answered.add(region)

        # 1. Terminated or stopped through the API (or gone): kill its processes.
        with self._lock:
            running = list(self._running.items())
        for iid, r in running:
            if r.instance.region not in answered:
                continue
            state = listed.get(iid, {}).get("State", {}).get("Name", "gone")
            if state in _DOWN_STATES or state == "gone":
                self._forget(iid)
                r.instance.status = "stopped"
                self._note(r.instance, f"instance is {state} through the API: killing its processes")
                self._kill_in_background(r, f"instance {state}")

        # 2. Powered off: the script exited. Kill what is left and terminate the instance.
        for iid, r in running:
            if self._running.get(iid) is not r:
                continue
            exited = r.popen.poll() is not None
            if exited or (r.instance.directory / "poweroff").exists():
                self._forget(iid)
                r.instance.status = "powered-off"
                r.instance.returncode = r.popen.returncode
                how = f"exit code {r.popen.returncode}" if exited else "poweroff called"
                self._note(r.instance, f"powered off ({how}): terminating the instance")
                self._kill_in_background(r, "powered off")
                self._to_terminate[iid] = r.instance.region

        # 3. New running instances boot, oldest first.
        new = [
            inst
            for iid, inst in listed.items()
            if iid not in self._instances and inst.get("State", {}).get("Name") == "running"
        ]
        new.sort(key=lambda i: (str(i.get("LaunchTime", "")), i.get("AmiLaunchIndex", 0), i["InstanceId"]))
        for inst in new:
            self._boot(clients[inst["_region"]], inst)

        # 4. Terminations owed to the API (power-offs, refusals), retried until they succeed.
        for iid, region in list(self._to_terminate.items()):
            try:
                clients[region].terminate_instances(InstanceIds=[iid])
            except Exception as e:
                logger.warning("offline EC2: could not terminate %s yet: %s", iid, e)
            else:
                del self._to_terminate[iid]

    def _boot(self, ec2: Any, inst: Mapping[str, Any]) -> None:
        iid = inst["InstanceId"]
        region = inst["_region"]
        private_ip = inst.get("PrivateIpAddress") or ""
        assert self.workdir is not None and self.env_cache is not None
        directory = self.workdir / iid
        directory.mkdir(parents=True, exist_ok=True)
        try:
            node_host = loopback_address(private_ip)
        except ValueError:
            node_host = ""
        instance = OfflineInstance(iid, region, private_ip, node_host, directory)
        with self._lock:
            self._instances[iid] = instance

        if not node_host:
            return self._refuse(ec2, instance, f"it has no IPv4 private address ({private_ip!r})")
        holders = [r.instance.instance_id for r in self._running.values() if r.instance.node_host == node_host]
        if holders:
            return self._refuse(
                ec2,
                instance,
                f"its loopback address {node_host} (from private address {private_ip}) is already "
                f"used by running instance {holders[0]}",
            )
        if len(self._running) >= self.max_instances:
            return self._refuse(
                ec2,
                instance,
                f"this machine holds at most {self.max_instances} simulated instances and "
                f"{len(self._running)} are running; ask for fewer instances or raise the limit "
                f"(OfflineEC2(max_instances=...), or --max-instances)",
            )
        try:
            reply = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
            encoded = reply.get("UserData", {}).get("Value")
        except Exception as e:
            return self._refuse(ec2, instance, f"its user data could not be read: {e}")
        if not encoded:
            instance.status = "no-user-data"
            self._note(instance, "no user data: nothing to run")
            return None
        script = base64.b64decode(encoded)
        if script[:2] == b"\x1f\x8b":
            script = gzip.decompress(script)
        if script.lstrip().startswith((b"#cloud-config", b"Content-Type:", b"MIME-Version:")):
            return self._refuse(
                ec2, instance, "its user data is not a shell script (cloud-config and MIME multipart are not simulated)"
            )
        path = directory / "user-data"
        path.write_bytes(script)
        path.chmod(0o700)
        argv = [str(path)] if script.startswith(b"#!") else ["bash", str(path)]

        temporary = directory / "tmp"
        temporary.mkdir(mode=0o700, exist_ok=True)
        env = {name: os.environ[name] for name in self.inherit_env if name in os.environ}
        env.update(self.environ())
        env.update(
            AWS_DEFAULT_REGION=region,
            AWS_REGION=region,
            COILED_OFFLINE="1",
            COILED_INSTANCE_ID=iid,
            COILED_PRIVATE_IP=private_ip,
            COILED_NODE_HOST=node_host,
            COILED_INSTANCE_DIR=str(directory),
            COILED_NODE_ROOT=str(directory),
            # The instance's own /tmp: what its processes leave there stays with its directory.
            TMPDIR=str(temporary),
        )
        if self.shared_env_cache:
            env["COILED_ENV_CACHE"] = str(self.env_cache)
        env.update(self.extra_env)
        env["PATH"] = os.pathsep.join(p for p in (str(self.workdir / "bin"), env.get("PATH", os.defpath)) if p)
        env[RUNNER_ENV] = self._marker
        try:
            with open(instance.log_path, "ab") as log:
                popen = subprocess.Popen(
                    argv,
                    cwd=directory,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    close_fds=True,
                    start_new_session=True,
                )
        except OSError as e:
            return self._refuse(ec2, instance, f"its user data could not be executed: {e}")
        instance.pid = popen.pid
        with self._lock:
            self._running[iid] = _Running(instance, popen)
        logger.info("offline EC2: booted %s (%s as %s), pid %d", iid, private_ip, node_host, popen.pid)
        return None

    def _refuse(self, ec2: Any, instance: OfflineInstance, why: str) -> None:
        message = f"offline EC2 refused to boot instance {instance.instance_id}: {why}"
        instance.status = "refused"
        instance.error = message
        with self._lock:
            self.errors.append(f"{instance.instance_id}: {message}")
        logger.error("%s", message)
        self._note(instance, message + "; terminating it")
        try:
            ec2.create_tags(Resources=[instance.instance_id], Tags=[{"Key": ERROR_TAG, "Value": message[:255]}])
        except Exception as e:
            logger.warning("offline EC2: could not tag %s: %s", instance.instance_id, e)
        self._to_terminate[instance.instance_id] = instance.region

    def _forget(self, iid: str) -> None:
        with self._lock:
            self._running.pop(iid, None)

    @staticmethod
    def _note(instance: OfflineInstance, line: str) -> None:
        """Append a runner note to the instance's log."""
        try:
            with open(instance.log_path, "a") as f:
                f.write(f"[offline EC2 {time.strftime('%H:%M:%S')}] {line}\n")
        except OSError:
            pass

    # ------------------------------------------------------------------------------ killing

    def _remember_descendants(self) -> None:
        """Record every descendant of each running instance, so that one which leaves the
        process group (setsid) and then loses its parent can still be killed."""
        with self._lock:
            running = list(self._running.values())
        if not running:
            return
        children: dict[int, list[int]] = {}
        for p in psutil.process_iter(["ppid"]):
            children.setdefault(p.info["ppid"] or 0, []).append(p.pid)
        for r in running:
            stack = list(children.get(r.popen.pid, []))
            while stack:
                pid = stack.pop()
                if pid not in r.seen:
                    try:
                        r.seen[pid] = psutil.Process(pid)
                    except psutil.Error:
                        continue
                stack.extend(children.get(pid, []))

    def _kill_in_background(self, r: _Running, why: str) -> None:
        t = threading.Thread(target=self._kill, args=(r, why), name=f"kill-{r.instance.instance_id}", daemon=True)
        self._killers = [k for k in self._killers if k.is_alive()] + [t]
        t.start()

    def _kill(self, r: _Running, why: str) -> None:
        """SIGTERM every process of the instance, SIGKILL after ``kill_grace``, reap the leader."""
        iid = r.instance.instance_id
        leader = r.popen

        def members() -> list[psutil.Process]:
            found = {p.pid: p for p in r.seen.values() if _alive(p)}
            marker = self._marker
            for p in _marked_processes(lambda value: value == marker, lambda env: env.get("COILED_INSTANCE_ID") == iid):
                found.setdefault(p.pid, p)
            for p in psutil.process_iter():
                try:
                    if p.pid not in found and p.pid != os.getpid() and os.getpgid(p.pid) == leader.pid:
                        found[p.pid] = p
                except (OSError, psutil.Error):
                    pass
            for p in list(found.values()):
                try:
                    for c in p.children(recursive=True):
                        found.setdefault(c.pid, c)
                except psutil.Error:
                    pass
            found.pop(leader.pid, None)  # reaped through Popen, so its exit code is kept
            # Zombies are dead already (their new parent reaps them, perhaps slowly).
            return [p for p in found.values() if _alive(p)]

        def signal_all(sig: int) -> None:
            if leader.poll() is None:  # not yet reaped: its pid is still its group's id
                try:
                    os.killpg(leader.pid, sig)
                except OSError:
                    pass
            for p in members():
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass

        signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace
        pending = members()
        while time.monotonic() < deadline:
            pending = [p for p in pending if _alive(p)]
            if leader.poll() is not None and not pending:
                pending = members()  # anything forked meanwhile?
                if not pending:
                    break
            time.sleep(0.05)
        for _ in range(5):  # SIGKILL, again for anything forked meanwhile
            signal_all(signal.SIGKILL)
            try:
                leader.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            left = members()
            if not left:
                break
            psutil.wait_procs(left, timeout=1)
        if r.instance.returncode is None:
            r.instance.returncode = leader.returncode
        logger.info("offline EC2: processes of %s killed (%s)", iid, why)


# ------------------------------------------------------------------------- authentication

#: How far a request's X-Amz-Date may be from now, as AWS allows.
_CLOCK_SKEW_SECONDS = 15 * 60
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/(?P<service>[^/,\s]+)"
    r"/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;_.-]+),\s*Signature=(?P<signature>[0-9a-f]{64})"
)


class _Refused(Exception):
    """A request the gate answers itself, with an AWS-style error."""

    def __init__(self, code: str, message: str, status: str = "403 Forbidden"):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class _Gate:
    """WSGI middleware in front of moto: only requests signed by a key the simulator made pass.

    moto checks no signature (unless its IAM auth is on, which ``/moto-api`` turns off for
    anyone), and picks the account from a header any caller can set. The gate verifies each
    request's Signature V4 against the keys in ``keys`` (access key id -> :class:`Credentials`),
    then tells moto the key's account (``x-moto-account-id``, replacing the caller's). Unsigned
    requests, ``/moto-api`` included, are refused.

    It refuses a request that breaks its operation's constraints in botocore's model (lengths,
    patterns, enums, ranges: :func:`coiled_aws.testing.validation.request_violations`, and for
    S3's REST requests :func:`~coiled_aws.testing.validation.rest_request_violations`), whoever
    sent it, with the error AWS answers.

    It also plays S3's ``ExpectedBucketOwner`` check, which moto ignores: a request carrying
    ``x-amz-expected-bucket-owner`` for a bucket another account owns is refused with
    ``AccessDenied``, as S3 does. Bucket requests that do not carry it are noted in
    ``unchecked`` (CreateBucket cannot carry it).
    """

    def __init__(self, app: Any, keys: Mapping[str, Credentials], unchecked: list[str]):
        self.app, self.keys, self.unchecked = app, keys, unchecked

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        body = _read_body(environ)
        scope = re.search(r"Credential=[^/,\s]*/\d{8}/[^/,\s]+/([^/,\s]+)/", environ.get("HTTP_AUTHORIZATION", ""))
        service = scope.group(1) if scope else ""  # for the shape of an error reply only
        try:
            credentials = self._authenticate(environ, body)
            environ["HTTP_X_MOTO_ACCOUNT_ID"] = credentials.account_id
            if service == "s3":
                self._check_bucket_owner(environ, credentials)
                self._check_rest_model(service, environ)
            else:
                self._check_model(service, environ, body)
        except _Refused as refusal:
            logger.info("offline EC2 refused %s %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), refusal.message)
            return _error_reply(start_response, environ, service, refusal)
        return self.app(environ, start_response)

    def _authenticate(self, environ: Mapping[str, Any], body: bytes) -> Credentials:
        match = _AUTHORIZATION.fullmatch(environ.get("HTTP_AUTHORIZATION", "").strip())
        if match is None:
            raise _Refused("MissingAuthenticationToken", "the offline simulator answers only requests signed with its credentials (Signature V4)")
        credentials = self.keys.get(match["key"])
        if credentials is None:
            raise _Refused("InvalidClientTokenId", "the security token included in the request is invalid")
        headers = _signed_headers(environ, match["signed"].split(";"))
        timestamp = headers.get("x-amz-date", "")
        if not timestamp.startswith(match["date"]) or not _fresh(timestamp):
            raise _Refused("RequestExpired", "the request's X-Amz-Date is missing, does not match its scope, or is not within 15 minutes of now")
        expected = _signature(environ, body, headers, credentials, match["region"], match["service"])
        if not hmac.compare_digest(expected, match["signature"]):
            raise _Refused("SignatureDoesNotMatch", "the request signature does not match")
        declared = headers.get("x-amz-content-sha256", "")
        if re.fullmatch(r"[0-9a-f]{64}", declared) and hashlib.sha256(body).hexdigest() != declared:
            raise _Refused("XAmzContentSHA256Mismatch", "the body does not match its signed sha256", "400 Bad Request")
        return credentials

    @staticmethod
    def _check_model(service: str, environ: Mapping[str, Any], body: bytes) -> None:
        """Refuse what AWS refuses and moto takes: a request that breaks its operation's
        constraints in botocore's model (coiled_aws.testing.validation)."""
        from coiled_aws.testing.validation import request_violations

        broken = request_violations(service, environ.get("HTTP_X_AMZ_TARGET"), body)
        if broken is not None:
            raise _Refused(broken[0], broken[1], "400 Bad Request")

    @staticmethod
    def _check_rest_model(service: str, environ: Mapping[str, Any]) -> None:
        """:meth:`_check_model` for a REST request (S3): its URI, query and header members."""
        from urllib.parse import parse_qsl

        from coiled_aws.testing.validation import rest_request_violations

        headers = {k[5:].lower().replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
        for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(name):
                headers[name.lower().replace("_", "-")] = environ[name]
        query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        broken = rest_request_violations(service, environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""), query, headers)
        if broken is not None:
            raise _Refused(broken[0], broken[1], "400 Bad Request")

    def _check_bucket_owner(self, environ: Mapping[str, Any], credentials: Credentials) -> None:
        path = environ.get("PATH_INFO", "")
        bucket, _, key = path.lstrip("/").partition("/")
        if not bucket:
            return  # ListBuckets
        expected = environ.get("HTTP_X_AMZ_EXPECTED_BUCKET_OWNER")
        if expected is None:
            creating = environ.get("REQUEST_METHOD") == "PUT" and not key and not environ.get("QUERY_STRING")
            if not creating:
                self.unchecked.append(f"{environ.get('REQUEST_METHOD')} {path} (account {credentials.account_id})")
            return
        owner = _bucket_owner(bucket)
        if owner is not None and owner != expected:
            raise _Refused("AccessDenied", "Access Denied")


def _with_validation(plugins: str) -> str:
    """``BOTOCORE_EXPERIMENTAL__PLUGINS`` with the model validation of coiled_aws.testing added."""
    from coiled_aws.testing.validation import PLUGIN

    listed = [p for p in plugins.split(",") if p.strip() and p.strip() != PLUGIN and plugins != "DISABLED"]
    return ",".join([*listed, PLUGIN])


def _read_body(environ: dict[str, Any]) -> bytes:
    """The request's body, read once and put back for moto."""
    length = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if length.isdigit():
        body = stream.read(int(length))
    elif environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        body = b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _signed_headers(environ: Mapping[str, Any], names: list[str]) -> dict[str, str]:
    """The values of the headers the client signed, by lower-case name."""
    headers = {}
    for name in names:
        variable = name.upper().replace("-", "_")
        value = environ.get(variable if variable in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{variable}")
        if value is None:
            raise _Refused("SignatureDoesNotMatch", f"signed header {name!r} is missing")
        headers[name] = value
    return headers


def _fresh(timestamp: str) -> bool:
    try:
        signed_at = datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return False
    return abs((datetime.now(timezone.utc) - signed_at).total_seconds()) <= _CLOCK_SKEW_SECONDS


def _signature(
    environ: Mapping[str, Any], body: bytes, headers: dict[str, str], credentials: Credentials, region: str, service: str
) -> str:
    """The Signature V4 the client must have sent, computed as botocore computes it."""
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotocoreCredentials

    target = environ.get("RAW_URI") or environ.get("PATH_INFO", "/")
    if not environ.get("RAW_URI") and environ.get("QUERY_STRING"):
        target += "?" + environ["QUERY_STRING"]
    request = AWSRequest(method=environ["REQUEST_METHOD"], url=f"http://{environ.get('HTTP_HOST', '')}{target}", data=body, headers=headers)
    request.context["timestamp"] = headers["x-amz-date"]
    signer_class = S3SigV4Auth if service == "s3" else SigV4Auth  # S3 signs its path as sent
    signer = signer_class(BotocoreCredentials(credentials.access_key_id, credentials.secret_access_key), service, region)
    canonical = signer.canonical_request(request)
    return signer.signature(signer.string_to_sign(request, canonical), request)


def _bucket_owner(bucket: str) -> str | None:
    """The account that owns ``bucket`` in moto, or None if there is no such bucket."""
    from moto.s3.models import s3_backends

    owner = s3_backends.bucket_accounts.get(bucket)
    return owner[1] if owner else None


def _error_reply(start_response: Any, environ: Mapping[str, Any], service: str, refusal: _Refused) -> list[bytes]:
    """The error as the caller's protocol writes one, so botocore raises a ClientError with its code."""
    from xml.sax.saxutils import escape

    code, message = escape(refusal.code), escape(refusal.message)  # a message may quote the caller's text
    if environ.get("HTTP_X_AMZ_TARGET"):
        content_type = "application/x-amz-json-1.1"
        body = json.dumps({"__type": refusal.code, "message": refusal.message}).encode()
    elif service == "s3":
        content_type = "application/xml"
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    else:  # EC2 and the query protocol (IAM, STS) read this shape
        content_type = "text/xml"
        body = (
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
            f"</Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
        ).encode()
    if environ.get("REQUEST_METHOD") == "HEAD":
        body = b""
    start_response(refusal.status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def _quiet_moto_server(wrap: Any = None) -> Any:
    """moto's ThreadedMotoServer on 127.0.0.1, port 0, with request logging at debug level only
    (werkzeug would otherwise print every one of the runner's five describes a second); ``wrap``
    (a function of the WSGI app) puts middleware in front of moto."""
    from moto import server as moto_server
    from werkzeug.serving import make_server

    class QuietHandler(moto_server.MotoRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            logger.debug("moto: %s %s", self.requestline, code)

        def log(self, type: str, message: str, *args: Any) -> None:
            logger.debug("moto %s: " + message, type, *args)

    class Server(moto_server.ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = moto_server.DomainDispatcherApplication(moto_server.create_backend_app)
            if wrap is not None:
                app = wrap(app)
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=QuietHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    return Server(ip_address="127.0.0.1", port=0, verbose=False)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _marked_processes(match_marker: Any, match_env: Any = None) -> list[psutil.Process]:
    """This user's live processes whose ``COILED_OFFLINE_RUNNER`` satisfies ``match_marker``."""
    uid = os.getuid()
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["uids"]):
        try:
            if p.pid == me or p.info["uids"] is None or p.info["uids"].real != uid:
                continue
            env = p.environ()
            value = env.get(RUNNER_ENV)
            if value and match_marker(value) and (match_env is None or match_env(env)) and _alive(p):
                found.append(p)
        except (psutil.Error, OSError):
            pass
    return found


def _kill_processes(procs: list[psutil.Process], grace: float) -> None:
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=2)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m coiled_aws.offline``: run an offline EC2 until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m coiled_aws.offline",
        description="Simulated EC2 on this machine: moto on 127.0.0.1 plus a runner that boots "
        "each instance's user data as local processes. Export the printed variables in the shell "
        "that runs coiled.Cluster(backend='aws', ...).",
    )
    parser.add_argument(
        "--region",
        action="append",
        dest="regions",
        metavar="REGION",
        help="region whose instances boot (repeatable; default us-east-1)",
    )
    parser.add_argument(
        "--max-instances",
        type=int,
        default=None,
        help=f"most instances running at once (default {default_max_instances()} here)",
    )
    parser.add_argument("--workdir", default=None, help="instance directories and logs (default: a temporary one)")
    parser.add_argument(
        "--env-cache",
        default=os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
            "coiled",
            "offline-env-cache",
        ),
        help="software environments shared by instances and kept across runs (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    # This process is moto's: a profile the shell names (perhaps one that does not exist) must
    # not leak into it, nor the real session's token.
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "MOTO_ACCOUNT_ID"):
        os.environ.pop(name, None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    ec2 = OfflineEC2(
        args.regions or ["us-east-1"], max_instances=args.max_instances, workdir=args.workdir, env_cache=args.env_cache
    )
    with ec2:
        print("# Offline EC2 is running. In the shell that uses it (the key is this run's own):", flush=True)
        print("unset AWS_PROFILE AWS_SESSION_TOKEN")
        for key, value in ec2.environ().items():
            print(f"export {key}={value}")
        print(
            f"# regions: {' '.join(ec2.regions)}; at most {ec2.max_instances} instances; logs in {ec2.workdir}",
            flush=True,
        )
        print("# Ctrl-C stops it and every simulated instance.", flush=True)
        while not stopping.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
