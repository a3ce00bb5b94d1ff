"""Software environments on the local backend: virtual environments built once per spec hash.

An environment lives in ``<root>/.envs/<hash>/``; ``.complete`` marks a finished build, so a
half-built one (a crash, a failed pip run) is rebuilt, never used. A file lock per hash makes
concurrent builds of one spec safe: the first process builds, the others wait and reuse it.
The node agent runs in the environment's interpreter with the agent bundle on ``PYTHONPATH``
(see ``coiled_core.backend.agent_bundle``), since the environment itself lacks coiled-core.
"""

from __future__ import annotations

import fcntl
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from coiled_core.backend import ClusterSpecError, ProvisionError, agent_bundle, node_requirements

from coiled_local.options import LocalOptions
from coiled_local.processes import state_root

if TYPE_CHECKING:
    from coiled_core.backend import SoftwareEnvironment

logger = logging.getLogger("coiled")

ENVS_DIR = ".envs"
COMPLETE_MARKER = ".complete"
#: pip lines worth showing as progress (the rest goes to DEBUG).
PROGRESS_PREFIXES = ("Collecting", "Downloading", "Installing", "Successfully", "ERROR", "error")


def environments_root(options: LocalOptions) -> Path:
    return state_root(options) / ENVS_DIR


def conda_tool() -> str | None:
    """A conda-compatible command on this machine, if any."""
    for name in ("micromamba", "mamba", "conda"):
        path = shutil.which(name)
        if path:
            return path
    return None


def check_buildable(env: SoftwareEnvironment) -> None:
    """Raise before anything starts if this machine cannot build ``env``."""
    if env.kind == "container":
        raise ClusterSpecError(
            f"software={env.name!r} is a container ({env.container}); the local backend runs "
            "processes, not containers: use a pip or conda environment here, or a backend that runs "
            "containers (k8s)"
        )
    machine = platform.machine().lower()
    if env.arm and machine not in ("arm64", "aarch64"):
        raise ClusterSpecError(
            f"software={env.name!r} was made with arm=True, but this machine is {machine}; the local backend "
            "builds environments for this machine only: use one made without arm"
        )
    if env.kind == "conda" and conda_tool() is None:
        raise ClusterSpecError(
            f"software={env.name!r} is a conda environment, but this machine has no conda, mamba or "
            "micromamba on PATH to build it; install one of them, or use a pip environment"
        )
    if env.kind == "pip" and env.python != f"{sys.version_info.major}.{sys.version_info.minor}":
        if shutil.which(f"python{env.python}") is None:
            raise ClusterSpecError(
                f"software={env.name!r} needs Python {env.python}, which this machine does not have "
                f"(no python{env.python} on PATH)"
            )


def _run_streaming(command: list[str], env_name: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a build command, logging its progress; return its exit code and output tail."""
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, stdin=subprocess.DEVNULL
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            tail.append(line)
            level = logging.INFO if line.lstrip().startswith(PROGRESS_PREFIXES) else logging.DEBUG
            logger.log(level, "Building %s: %s", env_name, line.strip())
    return process.returncode, "\n".join(tail)


def _build_pip(env: SoftwareEnvironment, target: Path) -> None:
    interpreter = sys.executable
    if env.python != f"{sys.version_info.major}.{sys.version_info.minor}":
        interpreter = shutil.which(f"python{env.python}") or interpreter
    code, output = _run_streaming([interpreter, "-m", "venv", str(target)], env.name)
    if code != 0:
        raise ProvisionError(f"creating the virtual environment for software={env.name!r} failed:\n{output}")
    requirements = [*env.pip, *node_requirements()]
    code, output = _run_streaming(
        [str(target / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *requirements],
        env.name,
    )
    if code != 0:
        raise ProvisionError(f"building software environment {env.name!r} failed; pip said:\n{output}")


def _build_conda(env: SoftwareEnvironment, target: Path) -> None:
    tool = conda_tool()
    assert tool is not None
    spec = dict(env.conda or {})
    dependencies = list(spec.get("dependencies") or [])
    dependencies.extend(node_requirements())
    spec["dependencies"] = dependencies
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(spec, f)
    try:
        code, output = _run_streaming([tool, "env", "create", "-y", "-p", str(target), "-f", f.name], env.name)
    finally:
        os.unlink(f.name)
    if code != 0:
        raise ProvisionError(f"building conda environment {env.name!r} failed; {Path(tool).name} said:\n{output}")


def _run_post_build(env: SoftwareEnvironment, target: Path) -> None:
    """The environment's ``post_build`` commands, in bash, with the environment active."""
    if not env.post_build:
        return
    script = "set -e\n" + "\n".join(env.post_build) + "\n"
    variables = {
        **os.environ,
        "PATH": f"{target / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(target),
        "CONDA_PREFIX": str(target),
    }
    code, output = _run_streaming(["bash", "-c", script], env.name, env=variables)
    if code != 0:
        raise ProvisionError(f"post_build of software environment {env.name!r} failed (exit code {code}):\n{output}")


def ensure_environment(env: SoftwareEnvironment, options: LocalOptions) -> tuple[Path, bool]:
    """The interpreter of ``env``'s environment, building it first if needed.

    Returns the interpreter and whether this call built the environment.
    Raises ProvisionError with the build tool's message if the build fails (and leaves nothing).
    """
    check_buildable(env)
    root = environments_root(options)
    root.mkdir(parents=True, exist_ok=True)
    digest = env.spec_hash()[:24]
    target = root / digest
    python = target / "bin" / "python"
    if (target / COMPLETE_MARKER).exists():
        return python, False
    with open(root / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building this very spec
        if (target / COMPLETE_MARKER).exists():
            return python, False
        shutil.rmtree(target, ignore_errors=True)  # a partial build from a crash
        logger.info("Building software environment %s (%s, once for this spec)", env.name, env.kind)
        try:
            if env.kind == "conda":
                _build_conda(env, target)
            else:
                _build_pip(env, target)
            _run_post_build(env, target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        (target / COMPLETE_MARKER).write_text(env.model_dump_json())
    return python, True


def agent_environment(options: LocalOptions, env: SoftwareEnvironment | None = None) -> dict[str, str]:
    """Environment variables that let an environment's interpreter import the node agent, and
    (``include_local_code``) the client's working directory, as the client itself does."""
    bundle = agent_bundle(environments_root(options) / "agent")
    paths = [str(bundle)]
    if env is not None and env.include_local_code:
        paths.append(os.getcwd())
    return {"PYTHONPATH": os.pathsep.join(paths)}
