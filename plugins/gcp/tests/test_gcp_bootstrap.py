"""The startup script: the core's boot script with GCP's store, node id and self-deleting power-off."""

import subprocess

from coiled_gcp import bootstrap

from coiled_core.backend import (
    StoredFile,
    boot_software,
    build_node_config,
    node_requirements,
    software_environment,
)
from coiled_core.spec import resolve_cluster_spec


def _script():
    spec = resolve_cluster_spec({"name": "boot", "n_workers": 1, "security": False})
    config = build_node_config(spec, "scheduler", include_environ=False)
    software = boot_software(software_environment(spec), node_requirements())
    return bootstrap.render("boot", config.to_dict(), software, "bucket", StoredFile("agent/a.zip", "0" * 64), log_prefix="logs/boot/")


def test_the_script_deletes_its_own_instance_and_parses():
    script = _script()
    assert "compute/v1/projects/$project/zones/$zone/instances/$COILED_INSTANCE_ID" in script
    assert "computeMetadata/v1/instance/name" in script
    assert len(script.encode()) < 32 * 1024
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_the_store_program_needs_nothing_beyond_the_standard_library():
    store = bootstrap.node_store("bucket")
    assert store.requirements == () and store.settings == {"bucket": "bucket"}
    compile(store.program, "node_store.py", "exec")


def test_the_store_program_keeps_the_contract_against_the_fake(offline_gcp, tmp_path):
    """get (2 when missing), put (overwrites), create (3 when it exists), as the boot script uses it."""
    import json
    import os
    import sys

    from coiled_gcp import storage
    from coiled_gcp.options import GCPOptions
    from coiled_gcp.session import GCP

    bucket = storage.ensure_bucket(GCP(GCPOptions()))
    program = tmp_path / "store.py"
    program.write_text(bootstrap.store_program())
    env = {**os.environ, "COILED_STORE": json.dumps(bootstrap.node_store(bucket).settings)}

    def store(*args):
        return subprocess.run([sys.executable, str(program), *args], env=env, capture_output=True, check=False).returncode

    source = tmp_path / "a.txt"
    source.write_text("one")
    assert store("get", "test/a.txt", str(tmp_path / "out")) == 2
    assert store("create", str(source), "test/a.txt") == 0
    assert store("create", str(source), "test/a.txt") == 3
    source.write_text("two")
    assert store("put", str(source), "test/a.txt") == 0
    assert store("get", "test/a.txt", str(tmp_path / "out")) == 0
    assert (tmp_path / "out").read_text() == "two"
