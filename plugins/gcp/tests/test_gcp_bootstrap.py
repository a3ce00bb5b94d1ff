"""The startup script: the core's boot script with GCP's store, node id and self-deleting power-off."""

import subprocess

from coiled_core.backend import StoredFile, boot_software, build_node_config, node_requirements, software_environment
from coiled_core.spec import resolve_cluster_spec

from coiled_gcp import bootstrap


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
