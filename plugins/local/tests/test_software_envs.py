"""Software environments on the local backend: built once per spec, used by the node agent."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from distributed import Client

import coiled
from coiled_core.errors import ClusterSpecError, ProvisionError

from coiled_local.environments import conda_tool, ensure_environment, environments_root
from coiled_local.options import LocalOptions

SMALL = {"n_workers": 1, "worker_cpu": 1, "worker_memory": "1 GiB", "wait_for_workers": True}


def test_cluster_runs_in_its_own_software_environment(tmp_path, monkeypatch):
    # tabulate is a small package this test environment does not have.
    with pytest.raises(ImportError):
        __import__("tabulate")
    # post_build runs in the built environment; include_local_code brings the client's directory.
    env = coiled.create_software_environment(
        "tests/with-tabulate",
        pip=["tabulate"],
        post_build=['python -c "import tabulate" && echo ran > "$VIRTUAL_ENV/post-build-ran"'],
        include_local_code=True,
    )
    assert any(r.startswith("distributed==") for r in env.pip)  # added at the client's version
    (tmp_path / "my_local_code.py").write_text("ANSWER = 42\n")
    monkeypatch.chdir(tmp_path)

    # Concurrent requests for one spec build it once.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: ensure_environment(env, LocalOptions()), range(2)))
    assert results[0][0] == results[1][0]
    assert sorted(built for _, built in results) == [False, True]
    python = results[0][0]
    assert python.is_relative_to(environments_root(LocalOptions()))

    with coiled.Cluster(software="tests/with-tabulate", **SMALL) as cluster:
        with Client(cluster) as client:

            def use_it():
                import sys

                import tabulate

                return tabulate.tabulate([[1, 2]]), sys.executable

            table, executable = client.submit(use_it).result()
            assert "1" in table and "2" in table
            assert executable == str(python)
            assert client.run_on_scheduler(lambda: __import__("sys").executable) == str(python)
            assert (python.parent.parent / "post-build-ran").read_text().strip() == "ran"
            assert client.submit(lambda: __import__("my_local_code").ANSWER).result() == 42

        # Attaching from this (different) environment names the packages that differ.
        with pytest.warns(UserWarning, match="numpy: client .*, cluster not installed"):
            attached = coiled.Cluster(name=cluster.name, show_widget=False)
        attached.close()


def test_failed_build_raises_pips_message_and_starts_nothing(state_root):
    coiled.create_software_environment("tests/broken", pip=["coiled-test-no-such-package-xyz"])
    with pytest.raises(ProvisionError, match="coiled-test-no-such-package-xyz") as info:
        coiled.Cluster(name="broken-env", software="tests/broken", **SMALL)
    assert "pip" in str(info.value)
    from coiled_core.plugins import load_backend

    backend = load_backend("local")
    record = backend.describe("broken-env", backend.validate_options({}))
    assert record is None or not record.state.is_live


def test_unknown_environment_is_refused_before_anything_starts():
    with pytest.raises(coiled.CoiledError, match="examples/scaling-xgboost"):
        coiled.Cluster(software="examples/scaling-xgbost", **SMALL)


def test_container_is_a_clear_error_on_local():
    coiled.create_software_environment("tests/in-a-box", container="ghcr.io/dask/dask:latest")
    with pytest.raises(ClusterSpecError, match="container"):
        coiled.Cluster(software="tests/in-a-box", **SMALL)


@pytest.mark.skipif(conda_tool() is not None, reason="this machine can build conda environments")
def test_conda_without_a_conda_tool_is_a_clear_error():
    coiled.create_software_environment("tests/conda-env", conda={"dependencies": ["python=3.11", "tabulate"]})
    with pytest.raises(ClusterSpecError, match="conda, mamba or micromamba"):
        coiled.Cluster(software="tests/conda-env", **SMALL)


def test_reference_xgboost_example_runs_unchanged():
    """coiled.Cluster(software="examples/scaling-xgboost"): the built-in spec, built on first use."""
    with coiled.Cluster(software="examples/scaling-xgboost", **SMALL) as cluster:
        with Client(cluster) as client:
            version = client.submit(lambda: __import__("xgboost").__version__).result()
            assert version.split(".")[0].isdigit()


def test_a_failing_post_build_fails_the_start_with_its_output(state_root):
    coiled.create_software_environment("tests/bad-post-build", pip=["tabulate"], post_build=["echo about to fail", "false"])
    with pytest.raises(ProvisionError, match=r"post_build .* failed \(exit code 1\)[\s\S]*about to fail"):
        coiled.Cluster(software="tests/bad-post-build", **SMALL)


def test_an_arm_environment_is_refused_on_another_machine():
    import platform

    if platform.machine().lower() in ("arm64", "aarch64"):
        pytest.skip("this machine is arm")
    coiled.create_software_environment("tests/armed", pip=["tabulate"], arm=True)
    with pytest.raises(ClusterSpecError, match="arm=True"):
        coiled.Cluster(software="tests/armed", **SMALL)
