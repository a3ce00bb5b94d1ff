"""The public API for backend authors: one module, complete, no cloud in the core, and the node
add-on extension points exercised on a real node agent."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from distributed import Client

import coiled_core.backend as backend_api
from coiled_core.claims import ClaimLease
from coiled_core.node.config import AddOnRef, build_node_config, read_report
from coiled_core.security import ClusterTLS
from coiled_core.spec import resolve_cluster_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
CLOUD_SDKS = ("boto3", "botocore", "google", "kubernetes")


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports (absolute names), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def test_nothing_in_the_core_imports_a_cloud_sdk():
    offending = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {module}"
        for path in sorted((REPO_ROOT / "coiled_core").rglob("*.py"))
        for module, line in _imports(path)
        if module.split(".")[0] in CLOUD_SDKS
    ]
    assert offending == []


def _backend_packages() -> list[Path]:
    packages = [p for p in (REPO_ROOT / "plugins").glob("*/coiled_*") if p.is_dir()]
    packages += [p for p in (REPO_ROOT / "examples").glob("*/coiled_*") if p.is_dir()]
    return sorted(packages)


def test_built_in_backends_import_the_core_only_through_its_public_module():
    assert len(_backend_packages()) >= 2
    offending = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {module}"
        for package in _backend_packages()
        for path in sorted(package.rglob("*.py"))
        for module, line in _imports(path)
        # The testing kit (contract suite, offline runners' shared pieces) is public too.
        if module.split(".")[0] == "coiled_core" and module != "coiled_core.backend" and not module.startswith("coiled_core.testing")
    ]
    assert offending == [], "backends may import only coiled_core.backend (and the testing kit, coiled_core.testing)"


def test_every_public_name_resolves():
    for name in backend_api.__all__:
        assert getattr(backend_api, name) is not None, name
    with pytest.raises(AttributeError):
        backend_api.no_such_name  # noqa: B018


def test_importing_the_node_side_of_the_api_stays_light():
    code = "import sys; from coiled_core.backend import NodeAddOn, NodeSecrets; print(sorted(m for m in ('pydantic', 'distributed', 'cryptography') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# -- claims -----------------------------------------------------------------------------------
def test_a_lease_is_stale_only_without_a_live_cluster_and_once_expired_or_provisioned():
    lease = ClaimLease.new(ttl=60)
    assert not lease.is_stale(cluster_live=False)
    assert lease.is_stale(cluster_live=False, now=time.time() + 61)
    assert not lease.is_stale(cluster_live=True, now=time.time() + 61)
    done = lease.provisioned()
    assert done.is_stale(cluster_live=False) and not done.is_stale(cluster_live=True)
    assert ClaimLease.from_json(lease.to_json()) == lease
    assert ClaimLease.from_json("not json").is_stale(cluster_live=False)  # unreadable: expired


# -- node add-ons on a real agent -------------------------------------------------------------
ADDON = '''
import json, os
from coiled_core.backend import NodeAddOn, NodeSecrets

class RecordingNode(NodeAddOn):
    log_interval = 0.2

    def _note(self, *event):
        with open(self.settings["events"], "a") as f:
            f.write(json.dumps(event) + "\\n")

    def load_secrets(self):
        with open(self.settings["secrets"]) as f:
            data = json.load(f)
        self._note("load_secrets")
        return NodeSecrets(tls=data["tls"], environ=data["environ"])

    def worker_names(self, prefix, count, first_index):
        return [f"{prefix}machine-{first_index + i}" for i in range(count)]

    def background_tasks(self, agent):
        async def beat():
            self._note("background", agent.config.cluster_name)
        return [beat()]

    def ship_log(self, path, final=False):
        self._note("ship_log", os.path.basename(path), final)

    def on_end(self, stop_reason):
        self._note("on_end", stop_reason)
'''


def test_a_node_add_on_fills_every_extension_point(tmp_path):
    (tmp_path / "addon_pkg").mkdir()
    (tmp_path / "addon_pkg" / "__init__.py").write_text("")
    (tmp_path / "addon_pkg" / "node.py").write_text(textwrap.dedent(ADDON))
    tls = ClusterTLS.generate("addon-test")
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"tls": {**tls.to_node_config("scheduler"), **tls.to_node_config("worker")},
                                   "environ": {"FROM_SECRET_STORE": "yes"}}))
    events = tmp_path / "events.jsonl"
    spec = resolve_cluster_spec({"name": "addon-test", "n_workers": 2, "worker_cpu": 1, "worker_memory": "1 GiB",
                                 "cluster_timeout": "4s"})
    config = build_node_config(
        spec, "combined", host="127.0.0.1",
        addon=AddOnRef("addon_pkg.node:RecordingNode", {"secrets": str(secrets), "events": str(events)}),
    )
    config.state_dir = str(tmp_path)
    config.log_file = str(tmp_path / "node.log")
    assert config.tls is None  # nothing secret in the config itself
    (tmp_path / "node.json").write_text(config.to_json())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    with open(tmp_path / "node.log", "ab") as log:
        agent = subprocess.Popen([sys.executable, "-m", "coiled_core.node", str(tmp_path / "node.json")],
                                 stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not ((report := read_report(str(tmp_path))) and report.state == "running"):
            assert agent.poll() is None and time.monotonic() < deadline, (tmp_path / "node.log").read_text()
            time.sleep(0.1)
        assert report.scheduler_address.startswith("tls://")  # TLS material from the add-on
        assert sorted(w.name for w in report.workers) == ["addon-test-worker-machine-0", "addon-test-worker-machine-1"]
        with Client(report.scheduler_address, security=tls.to_security("client")) as client:
            assert set(client.run(os.getenv, "FROM_SECRET_STORE").values()) == {"yes"}
        assert agent.wait(60) == 0  # the lifetime cap ends it
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    seen = [json.loads(line) for line in events.read_text().splitlines()]
    kinds = [event[0] for event in seen]
    assert kinds[0] == "load_secrets"
    assert ["background", "addon-test"] in seen
    assert ["ship_log", "node.log", False] in seen
    assert kinds.count("ship_log") >= 2  # at start and periodically
    assert seen[-2][0] == "on_end" and seen[-2][1].startswith("cluster-timeout")
    assert seen[-1] == ["ship_log", "node.log", True]  # last of all


def test_an_add_on_that_cannot_be_loaded_fails_the_node_with_its_name(tmp_path):
    spec = resolve_cluster_spec({"name": "addon-bad", "n_workers": 1})
    config = build_node_config(spec, "combined", addon=AddOnRef("no_such_pkg.node:Missing"))
    (tmp_path / "node.json").write_text(config.to_json())
    result = subprocess.run([sys.executable, "-m", "coiled_core.node", str(tmp_path / "node.json")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no_such_pkg.node:Missing" in result.stderr


def test_the_agent_bundle_carries_a_backends_add_on(tmp_path):
    import zipfile

    bundle = backend_api.agent_bundle(tmp_path, ["coiled_core.testing.faulty"])
    names = zipfile.ZipFile(bundle).namelist()
    assert "coiled_core/node/agent.py" in names and "coiled_core/testing/faulty.py" in names
    assert backend_api.agent_bundle(tmp_path, ["coiled_core.testing.faulty"]) == bundle  # built once


# -- names --------------------------------------------------------------------------------------
def test_dns_labels_are_deterministic_and_never_collide():
    from coiled_core.backend import dns_label

    assert dns_label("production") == "production"
    derived = {name: dns_label(name) for name in ("My_Cluster", "my-cluster", "my_cluster", "MY-CLUSTER", "x" * 128)}
    assert derived["my-cluster"] == "my-cluster"
    assert len(set(derived.values())) == len(derived)
    for name, label in derived.items():
        assert len(label) <= 63 and label == dns_label(name)
        assert __import__("re").fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", label), label
    assert dns_label("ab", prefix="coiled-") == "coiled-ab"
    assert len(dns_label("y" * 128, max_length=40, prefix="coiled-")) <= 40


# -- machine sizes ----------------------------------------------------------------------------
def test_memory_matches_within_the_tolerance_else_the_smallest_types_above():
    from types import SimpleNamespace

    from coiled_core.backend import MEMORY_TOLERANCE, smallest_above, within_memory

    GiB = 2**30
    types = [SimpleNamespace(name=f"m{g}", memory_bytes=int(g * GiB)) for g in (4, 7.5, 8, 8.5, 16, 17, 32)]
    names = lambda found: [t.name for t in found]  # noqa: E731
    assert MEMORY_TOLERANCE == 0.10
    assert names(within_memory(types, 8 * GiB)) == ["m7.5", "m8", "m8.5"]
    # A [min, max] range: from the tolerance under the minimum to the tolerance over the maximum.
    assert names(within_memory(types, 8 * GiB, 16 * GiB)) == ["m7.5", "m8", "m8.5", "m16", "m17"]
    assert within_memory(types, 12 * GiB) == []
    assert names(smallest_above(types, 12 * GiB)) == ["m16", "m17"]
    assert smallest_above(types, 64 * GiB) == []
