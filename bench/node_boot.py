"""Node boot benchmark: how a cloud node gets its software environment, and how long from boot
to a running node agent.

Prints, for the default software environment (the client's own versions of what a node needs),
with cold caches (an empty pip cache, an empty uv cache) on this machine:

- the old path: ``python -m venv`` + ``pip install`` of the pinned set;
- the uv build, which the first node of a new environment does (then packs and uploads);
- the fetch-and-unpack path every later node takes: download the pack (here from a directory
  store), check its sha256, unpack it (zstd tar) and relocate it;

each in seconds and as a ratio to the old path (goal: fetch at most 0.15), then, on the offline
EC2 with no shared cache and the pack already built, the boot of a 1-worker cluster's nodes: the
environment ready, and the node agent running, in seconds since boot (goal: the agent running
within 10 s of the environment being ready). Run with ``python bench/node_boot.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from coiled_core.backend import boot_software, node_requirements
from coiled_core.node import envpack
from coiled_core.software import default_software_spec
from coiled_core.testing.directory_store import directory_store

UV = shutil.which("uv") or shutil.which("uv", path=os.path.dirname(sys.executable))
PYTHON = getattr(sys, "_base_executable", sys.executable)


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def environment_paths(requirements: list[str], work: Path) -> dict[str, float]:
    cold = dict(os.environ, PIP_NO_CACHE_DIR="1", UV_CACHE_DIR=str(work / "uv-cache"))
    pip_env = work / "pip-env"
    pip_seconds = timed([PYTHON, "-m", "venv", str(pip_env)], cold)
    pip_seconds += timed([str(pip_env / "bin" / "python"), "-m", "pip", "install", "--quiet", *requirements], cold)

    uv_env = work / "uv-env"
    uv_seconds = timed([UV, "venv", "--quiet", "--relocatable", "--seed", "--python", PYTHON, str(uv_env)], cold)
    uv_seconds += timed([UV, "pip", "install", "--quiet", "--python", str(uv_env / "bin" / "python"), *requirements], cold)

    start = time.perf_counter()
    pack = work / "env.tar.zst"
    sha256, size = envpack.pack(uv_env, pack)
    pack_seconds = time.perf_counter() - start

    store = work / "store"
    store.mkdir()
    start = time.perf_counter()
    fetched = work / "fetched.tar.zst"
    shutil.copyfile(pack, fetched)  # the download, from a store on this machine's disk
    assert envpack.file_sha256(fetched) == sha256
    target = work / "node-env"
    envpack.unpack(fetched, target)
    envpack.relocate(target, str(uv_env), PYTHON)
    fetch_seconds = time.perf_counter() - start
    subprocess.run([str(target / "bin" / "python"), "-c", "import distributed, pandas, pyarrow"], check=True)
    return {"pip": pip_seconds, "uv": uv_seconds, "pack": pack_seconds, "fetch": fetch_seconds, "size": size / 1e6}


_BOOTED = re.compile(r"boot clock (\d+\.\d+)")
_SINCE = re.compile(r"coiled: boot: (.*) in [\d.]+ s \(([\d.]+) s since boot\)")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - distributed")


def node_boot(work: Path) -> list[dict[str, float]]:
    """Boot a 1-worker cluster on the offline EC2 (no shared cache, the pack prebuilt)."""
    import dask.config

    import coiled
    from coiled_aws.offline import OfflineEC2

    options = {"region": "us-east-1", "allow_ingress_from": "127.0.0.1/32"}
    with OfflineEC2(workdir=str(work / "ec2"), env_cache=False) as simulator:
        os.environ.pop("AWS_PROFILE", None)
        os.environ.update(simulator.environ())
        with dask.config.set({"coiled.loopback-addresses": True, "coiled.store": str(work / "store")}):
            coiled.create_software_environment("bench-boot", pip=default_software_spec().pip)
            coiled.build_software_environment("bench-boot", backend="aws", backend_options=options)
            with coiled.Cluster(
                name="bench-boot", software="bench-boot", n_workers=1, backend="aws", backend_options=options, security=False,
                wait_for_workers=True,
            ):
                pass
        rows = []
        for instance in simulator.instances.values():
            log = (instance.directory / "node.log").read_text() if (instance.directory / "node.log").exists() else ""
            booted = _BOOTED.search(log)
            steps = {m.group(1): float(m.group(2)) for m in _SINCE.finditer(log)}
            first_agent_line = next((m.group(1) for m in map(_STAMP.match, log.splitlines()) if m), None)
            if not booted or first_agent_line is None:
                continue
            agent = datetime.strptime(first_agent_line, "%Y-%m-%d %H:%M:%S,%f").timestamp() - float(booted.group(1))
            ready = next(v for k, v in steps.items() if k.startswith("software environment"))
            fetch = re.search(r"fetched the pack \(([\d.]+) MB\) in ([\d.]+) s, unpacked in ([\d.]+) s", log)
            rows.append({"environment ready": ready, "agent running": agent, "steps": steps, "fetch": fetch.groups() if fetch else None})
        return rows


def main() -> None:
    if UV is None:
        sys.exit("uv is not installed (pip install uv)")
    software = default_software_spec()
    requirements = list(boot_software(software, node_requirements("boto3")).requirements)
    with tempfile.TemporaryDirectory(prefix="coiled-bench-boot-") as work:
        paths = environment_paths(requirements, Path(work))
        print(f"default environment ({len(requirements)} requirements, pack {paths['size']:.0f} MB), cold caches:")
        for label, key in (("old path: venv + pip install", "pip"), ("uv build", "uv"), ("fetch pack + unpack", "fetch")):
            print(f"  {label:32s} {paths[key]:6.1f} s   {paths[key] / paths['pip']:5.2f} x the old path")
        print(f"  (packing it once, for the upload: {paths['pack']:.1f} s)")
        rows = node_boot(Path(work))
        print("offline EC2, 1-worker cluster, pack prebuilt, no shared cache (seconds since boot):")
        for n, row in enumerate(rows):
            gap = row["agent running"] - row["environment ready"]
            print(f"  node {n}: environment ready {row['environment ready']:5.1f}   agent running {row['agent running']:5.1f}   (+{gap:.1f} s)")
            print("    " + ", ".join(f"{step} at {at:.1f}" for step, at in row["steps"].items()))
            if row["fetch"]:
                print("    pack of {} MB downloaded from the simulated S3 in {} s, unpacked in {} s".format(*row["fetch"]))


if __name__ == "__main__":
    main()
