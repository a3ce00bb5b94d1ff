"""Software environment specs: validation, the store, built-ins, version checks and ``coiled env``."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import textwrap

import dask.config
import pytest
from click.testing import CliRunner
from packaging.specifiers import SpecifierSet

from coiled_core import software
from coiled_core.cli_env import env as env_cli
from coiled_core.errors import CoiledError
from coiled_core.software import (
    CLUSTER_PACKAGES,
    SoftwareEnvironment,
    SoftwareEnvironmentError,
    SoftwareEnvironmentNotFoundError,
    admits_supported_distributed,
    client_versions,
    create_software_environment,
    default_software_spec,
    delete_software_environment,
    get_software_info,
    list_software_environments,
    parse_conda_match_spec,
    resolve_name,
    version_mismatches,
)

DISTRIBUTED = importlib.metadata.version("distributed")
DASK = importlib.metadata.version("dask")
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(autouse=True)
def store(tmp_path):
    """A store of its own and a fixed default account for every test."""
    url = str(tmp_path / "store")
    with dask.config.set({"coiled.store": url, "coiled.account": "alice"}):
        yield url


# ------------------------------------------------------------------ validation


def test_at_least_one_of_pip_conda_container():
    with pytest.raises(SoftwareEnvironmentError, match="give pip, conda or container .got none"):
        create_software_environment("x")
    # Also a CoiledError and a ValueError, as other spec errors are.
    with pytest.raises(CoiledError):
        create_software_environment("x")
    with pytest.raises(ValueError):
        create_software_environment("x")


def test_packages_layer_as_people_create_them(tmp_path):
    # pip on top of an image.
    env = create_software_environment("layered", container="ghcr.io/dask/dask:latest", pip=["xarray"])
    assert env.kind == "container" and env.container == "ghcr.io/dask/dask:latest" and "xarray" in env.pip
    # conda with pip: the pip packages go into the conda environment.
    env = create_software_environment("both", conda={"channels": ["conda-forge"], "dependencies": ["numpy"]}, pip=["s3fs"])
    assert env.kind == "conda" and env.pip is None
    assert {"pip": ["s3fs"]} in env.conda["dependencies"]
    # conda as a plain list of packages, from conda-forge.
    env = create_software_environment("listed", conda=["dask", "xarray"])
    assert env.conda["channels"] == ["conda-forge"] and "xarray" in env.conda["dependencies"]
    # post_build as commands or a script; flags kept.
    script = tmp_path / "post.sh"
    script.write_text("#!/bin/bash\necho built > $CONDA_PREFIX/marker\n\npython -c 'import sys'\n")
    env = create_software_environment("flags", pip=["numpy"], post_build=str(script), gpu_enabled=True,
                                      include_local_code=True, private=True)
    assert env.post_build == ["echo built > $CONDA_PREFIX/marker", "python -c 'import sys'"]
    assert env.gpu_enabled and env.include_local_code and env.private
    assert create_software_environment("armed", pip=["numpy"], architecture="aarch64").arm
    # workspace is the account of a bare name; force_rebuild changes what is built.
    assert create_software_environment("env", workspace="team", pip=["numpy"]).name == "team/env"
    first = create_software_environment("again", pip=["numpy"])
    assert create_software_environment("again", pip=["numpy"]).spec_hash() == first.spec_hash()
    assert create_software_environment("again", pip=["numpy"], force_rebuild=True).spec_hash() != first.spec_hash()
    # Coiled's other keywords are accepted; unknown ones are named.
    create_software_environment("quiet", pip=["numpy"], log_output=None, use_uv_installer=True)
    with pytest.raises(SoftwareEnvironmentError, match="'pip_packages' is not a create_software_environment parameter"):
        create_software_environment("typo", pip_packages=["numpy"])
    with pytest.raises(SoftwareEnvironmentError, match="post_build: 'nope.sh' is not a file"):
        create_software_environment("bad", pip=["numpy"], post_build="nope.sh")


def test_hashes_of_specs_made_before_the_new_fields_are_unchanged():
    env = SoftwareEnvironment(name="a/b", kind="pip", pip=["numpy", "distributed==2024.1.0"], python="3.11")
    # The hash of this spec as earlier versions computed it (no post_build/gpu/arm/nonce keys).
    import hashlib
    import json as _json

    canonical = {"kind": "pip", "pip": sorted(env.pip), "conda": None, "container": None, "python": "3.11"}
    expected = hashlib.sha256(_json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert env.spec_hash() == expected


def test_other_users_private_environments_are_not_listed():
    mine = create_software_environment("mine-private", pip=["numpy"], private=True)
    theirs = mine.model_copy(update={"name": mine.name.replace("mine-private", "theirs-private"), "created_by": "someone-else"})
    from coiled_core.software import _key, _store

    _store().write(_key(theirs.name), theirs.model_dump_json().encode())
    names = {e.name for e in list_software_environments()}
    assert mine.name in names and theirs.name not in names


@pytest.mark.parametrize("name", ["", "a/b/c", "has space", "-lead", "acct/-x", "acct/", "/name", "x" * 200, "ünï"])
def test_invalid_names(name):
    with pytest.raises(SoftwareEnvironmentError, match="not a valid software environment name"):
        create_software_environment(name, pip=["numpy"])


def test_invalid_requirement_names_the_item():
    with pytest.raises(SoftwareEnvironmentError, match=r"pip item 1: 'numpy>>>1' is not a valid requirement"):
        create_software_environment("x", pip=["pandas", "numpy>>>1"])


@pytest.mark.parametrize("line", ["-r other.txt", "-e .", "--index-url https://example.com/simple"])
def test_pip_options_rejected(line, tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text(f"numpy\n{line}\n")
    with pytest.raises(SoftwareEnvironmentError, match=r"requirements.txt line 2: .*options and nested files"):
        create_software_environment("x", pip=str(path))
    with pytest.raises(SoftwareEnvironmentError, match=r"pip item 0: .*not supported"):
        create_software_environment("x", pip=[line])


def test_pip_empty_or_wrong_type(tmp_path):
    with pytest.raises(SoftwareEnvironmentError, match="no requirements given"):
        create_software_environment("x", pip=[])
    with pytest.raises(SoftwareEnvironmentError, match="is not a file"):
        create_software_environment("x", pip="numpy")
    with pytest.raises(SoftwareEnvironmentError, match="not int"):
        create_software_environment("x", pip=3)  # type: ignore[arg-type]
    empty = tmp_path / "requirements.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(SoftwareEnvironmentError, match="lists no requirements"):
        create_software_environment("x", pip=empty)


def test_requirements_file(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text(
        textwrap.dedent(
            """\
            # a comment

            numpy >= 1.20   # inline comment
            pandas[parquet]; python_version >= "3.8"
            scikit-learn \\
                ==1.5.0
            """
        )
    )
    env = create_software_environment("ml", pip=path)
    assert env.name == "alice/ml"
    assert env.kind == "pip"
    assert env.pip == [
        "numpy>=1.20",
        'pandas[parquet]; python_version >= "3.8"',
        "scikit-learn==1.5.0",
        f"distributed=={DISTRIBUTED}",
    ]
    assert env.python == PYTHON
    assert env.conda is None and env.container is None and not env.builtin


def test_invalid_line_in_requirements_file(tmp_path):
    path = tmp_path / "reqs.txt"
    path.write_text("numpy\n\nnot a requirement!\n")
    with pytest.raises(SoftwareEnvironmentError, match=r"reqs.txt line 3: 'not a requirement!' is not a valid requirement"):
        create_software_environment("x", pip=str(path))


def test_distributed_added_to_pip_at_client_version():
    env = create_software_environment("x", pip=["numpy"])
    assert env.pip == ["numpy", f"distributed=={DISTRIBUTED}"]


@pytest.mark.parametrize("requirement", ["distributed>=1.0", "distributed", "Distributed~=2.0", f"distributed=={DISTRIBUTED}", "distributed>2.23,<2.24"])
def test_distributed_listed_in_pip_is_kept(requirement):
    env = create_software_environment("x", pip=["numpy", requirement])
    assert len([r for r in env.pip if r.lower().startswith("distributed")]) == 1


@pytest.mark.parametrize("requirement", ["distributed<2.0", "distributed==2.20.0", "distributed<=2.22", "distributed~=2.22.0"])
def test_distributed_too_old_in_pip(requirement):
    with pytest.raises(SoftwareEnvironmentError, match=r"distributed >= 2.23.0"):
        create_software_environment("x", pip=["numpy", requirement])


def test_distributed_check_method():
    assert admits_supported_distributed(SpecifierSet(">=1.0"))
    assert admits_supported_distributed(SpecifierSet("!=2.23.0,<2.24"))
    assert admits_supported_distributed(SpecifierSet(">2023.1.0,<2023.1.1"))
    assert admits_supported_distributed(SpecifierSet("==2026.9.0rc1"))
    assert not admits_supported_distributed(SpecifierSet(">=2.0,<2.23"))


def test_conda_environment_yml(tmp_path):
    path = tmp_path / "environment.yml"
    path.write_text(
        textwrap.dedent(
            """\
            name: my-env
            channels: [conda-forge]
            dependencies:
              - python=3.11
              - numpy
              - pip
              - pip:
                  - xgboost-cpu
            """
        )
    )
    env = create_software_environment("conda-env", conda=path)
    assert env.kind == "conda"
    assert env.conda == {
        "channels": ["conda-forge"],
        "dependencies": ["python=3.11", "numpy", "pip", f"distributed={DISTRIBUTED}", {"pip": ["xgboost-cpu"]}],
    }
    assert env.packages()[-1] == "pip: xgboost-cpu"


@pytest.mark.parametrize(
    "dep",
    [
        "distributed",
        "distributed=2.30",
        "distributed>=2.23",
        "distributed==2023.1.0",
        "conda-forge::distributed>=2023.1.0",
        "distributed 2023.1.0 pyhd8ed1ab_0",
        "distributed=2023.1.0=pyhd8ed1ab_0",
        "distributed[version='>=2.23']",
    ],
)
def test_conda_distributed_forms_accepted(dep):
    env = create_software_environment("x", conda={"dependencies": ["numpy", dep]})
    assert env.conda["dependencies"] == ["numpy", dep]  # listed: nothing added


@pytest.mark.parametrize(
    "dep", ["distributed<2.0", "distributed=2.20", "distributed==2.20.0", "conda-forge::distributed<=2.22", "distributed 2.20.0"]
)
def test_conda_distributed_too_old(dep):
    with pytest.raises(SoftwareEnvironmentError, match=r"distributed >= 2.23.0"):
        create_software_environment("x", conda={"dependencies": ["numpy", dep]})


def test_conda_pip_sublist_distributed():
    env = create_software_environment("x", conda={"dependencies": ["numpy", {"pip": ["distributed>=2024.1.0"]}]})
    assert env.conda["dependencies"] == ["numpy", {"pip": ["distributed>=2024.1.0"]}]
    with pytest.raises(SoftwareEnvironmentError, match=r"pip item 0: 'distributed<2.0'.*2.23.0"):
        create_software_environment("x", conda={"dependencies": ["numpy", {"pip": ["distributed<2.0"]}]})
    with pytest.raises(SoftwareEnvironmentError, match=r"pip item 0: '-r x.txt'.*not supported"):
        create_software_environment("x", conda={"dependencies": ["numpy", {"pip": ["-r x.txt"]}]})


def test_parse_conda_match_spec():
    assert parse_conda_match_spec("conda-forge::distributed>=2.23,<3")[0] == "distributed"
    assert [str(s) for s in parse_conda_match_spec("distributed=2.30")[1]] == ["==2.30.*"]
    assert [str(s) for s in parse_conda_match_spec("distributed>=2.23|<1.0")[1]] == [">=2.23", "<1.0"]


@pytest.mark.parametrize(
    "conda, message",
    [
        ({"channels": ["conda-forge"]}, "needs a 'dependencies' list"),
        ({"dependencies": "numpy"}, "needs a 'dependencies' list"),
        ({"dependencies": ["numpy", 3]}, r"dependency 1 \(3\) must be a conda package spec"),
        ({"dependencies": ["numpy", {"pypi": ["x"]}]}, "must be a conda package spec or a {'pip': \\[...\\]} list"),
        ({"dependencies": ["numpy"], "channel": ["x"]}, "unsupported key.*'channel'"),
        ({"dependencies": ["numpy"], "channels": "conda-forge"}, "'channels' must be a list"),
        ([1, 2], "dependency 0 .1. must be a conda package spec"),
        ("no/such/environment.yml", "is not a file"),
    ],
)
def test_conda_invalid(conda, message):
    with pytest.raises(SoftwareEnvironmentError, match=message):
        create_software_environment("x", conda=conda)


def test_conda_file_not_yaml_mapping(tmp_path):
    path = tmp_path / "environment.yml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(SoftwareEnvironmentError, match="environment.yml must be a mapping"):
        create_software_environment("x", conda=str(path))
    path.write_text("dependencies: [unclosed\n")
    with pytest.raises(SoftwareEnvironmentError, match="is not valid YAML"):
        create_software_environment("x", conda=str(path))


@pytest.mark.parametrize(
    "image",
    [
        "daskdev/dask",
        "daskdev/dask:latest",
        "python:3.11-slim",
        "ghcr.io/dask/dask:2024.1.0",
        "localhost:5000/team/img",
        "registry.example.com:5000/team/sub/img:v1@sha256:" + "a" * 64,
        "ubuntu@sha256:" + "0" * 64,
    ],
)
def test_container_accepted(image):
    env = create_software_environment("x", container=image)
    assert env.kind == "container" and env.container == image and env.pip is None


@pytest.mark.parametrize("image", ["", "has space:latest", "UPPER/case", "repo:", "repo:bad/tag", "repo@sha256:xyz", "a//b", "-repo"])
def test_container_rejected(image):
    with pytest.raises(SoftwareEnvironmentError, match="container:"):
        create_software_environment("x", container=image)


# ------------------------------------------------------------------ names and accounts


def test_bare_name_uses_configured_account():
    assert create_software_environment("thing", pip=["numpy"]).name == "alice/thing"
    with dask.config.set({"coiled.account": "Team-A"}):
        assert resolve_name("thing") == "team-a/thing"
    with dask.config.set({"coiled.account": "bad account!"}), pytest.raises(CoiledError, match="coiled.account"):
        resolve_name("thing")
    # Names are case-insensitive.
    assert resolve_name("Bob/Thing") == "bob/thing"


def test_bare_name_uses_login_name(monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "Jane.Doe@Example")
    with dask.config.set({"coiled.account": None}):
        assert resolve_name("thing") == "jane-doe-example/thing"
        assert create_software_environment("thing", pip=["numpy"]).name == "jane-doe-example/thing"
        assert get_software_info("jane-doe-example/thing").name == "jane-doe-example/thing"


# ------------------------------------------------------------------ get / list / delete


def test_get_list_delete(store):
    a = create_software_environment("alice/a", pip=["numpy"])
    b = create_software_environment("bob/b", container="daskdev/dask:latest")
    assert get_software_info("a") == a
    assert get_software_info("bob/b") == b
    names = [e.name for e in list_software_environments()]
    assert names == ["alice/a", "bob/b", "examples/scaling-xgboost"]
    assert [e.name for e in list_software_environments(account="bob")] == ["bob/b"]
    assert [e.name for e in list_software_environments(account="examples")] == ["examples/scaling-xgboost"]
    # Stored as JSON at software/<account>/<name>.json under the layout version.
    with open(os.path.join(store, "v1", "software", "bob", "b.json")) as f:
        stored = json.load(f)
    assert stored["container"] == "daskdev/dask:latest"
    delete_software_environment("alice/a")
    assert [e.name for e in list_software_environments()] == ["bob/b", "examples/scaling-xgboost"]
    with pytest.raises(SoftwareEnvironmentNotFoundError):
        get_software_info("alice/a")
    with pytest.raises(SoftwareEnvironmentNotFoundError):
        delete_software_environment("alice/a")


def test_overwrite_returns_new_spec():
    first = create_software_environment("x", pip=["numpy"])
    second = create_software_environment("x", conda={"dependencies": ["pandas"]})
    assert second.kind == "conda" and second.spec_hash() != first.spec_hash()
    assert get_software_info("x") == second
    assert [e.name for e in list_software_environments(account="alice")] == ["alice/x"]


def test_builtin_scaling_xgboost():
    env = get_software_info("examples/scaling-xgboost")
    assert env.builtin and env.kind == "pip" and env.python == PYTHON
    assert env.pip == ["xgboost-cpu", f"dask[dataframe]=={DASK}", f"distributed=={DISTRIBUTED}", "numpy", "pandas"]
    assert get_software_info("Examples/Scaling-XGBoost") == env
    with pytest.raises(SoftwareEnvironmentError, match="built-in .* cannot be deleted"):
        delete_software_environment("examples/scaling-xgboost")
    with pytest.raises(SoftwareEnvironmentError, match="built-in .* cannot be overwritten"):
        create_software_environment("examples/scaling-xgboost", pip=["numpy"])
    assert get_software_info("examples/scaling-xgboost") == env


def test_unknown_name_suggests_close_matches():
    create_software_environment("alice/my-analysis", pip=["numpy"])
    with pytest.raises(SoftwareEnvironmentNotFoundError, match="did you mean 'examples/scaling-xgboost'"):
        get_software_info("examples/scaling-xgbost")
    with pytest.raises(SoftwareEnvironmentNotFoundError, match="did you mean 'alice/my-analysis'"):
        get_software_info("my-analisys")
    # The same name under another account is suggested too.
    with pytest.raises(SoftwareEnvironmentNotFoundError, match="did you mean 'examples/scaling-xgboost'"):
        get_software_info("scaling-xgboost")
    with pytest.raises(SoftwareEnvironmentNotFoundError) as info:
        get_software_info("zzz/qqqqqqqq")
    assert "did you mean" not in str(info.value)
    assert isinstance(info.value, LookupError) and isinstance(info.value, CoiledError)


# ------------------------------------------------------------------ hashing and versions


def test_spec_hash():
    a = create_software_environment("a", pip=["numpy", "pandas"])
    b = create_software_environment("other/b", pip=["pandas", "numpy"])
    c = create_software_environment("c", pip=["numpy", "pandas>=2"])
    assert a.spec_hash() == b.spec_hash()  # names, dates and order do not matter
    assert len(a.spec_hash()) == 64 and int(a.spec_hash(), 16) >= 0
    assert a.spec_hash() != c.spec_hash()
    assert a.spec_hash() != a.model_copy(update={"python": "3.99"}).spec_hash()
    d = create_software_environment("d", container="daskdev/dask:latest")
    e = create_software_environment("e", container="daskdev/dask:2024.1.0")
    assert d.spec_hash() != e.spec_hash()
    f = create_software_environment("f", conda={"channels": ["conda-forge"], "dependencies": ["numpy", "pandas"]})
    g = create_software_environment("g", conda={"name": "dropped", "channels": ["conda-forge"], "dependencies": ["pandas", "numpy"]})
    assert f.spec_hash() == g.spec_hash()
    assert f.spec_hash() != create_software_environment("h", conda={"dependencies": ["numpy", "pandas"]}).spec_hash()


def test_model_rejects_inconsistent_kind():
    with pytest.raises(ValueError):
        SoftwareEnvironment(name="a/b", kind="pip", container="x")
    with pytest.raises(ValueError):
        SoftwareEnvironment(name="no-account", kind="pip", pip=["x"])


def test_default_software_spec_pins_client_versions():
    env = default_software_spec()
    assert env.name == "coiled/default" and env.kind == "pip" and env.python == PYTHON
    expected = [
        f"{p}=={importlib.metadata.version(p)}"
        for p in ("dask", "distributed", "cloudpickle", "msgpack", "tornado", "toolz", "numpy", "pandas", "bokeh", "pyarrow")
    ]
    assert env.pip == expected


def test_default_software_spec_skips_missing(monkeypatch):
    real = software._installed_version
    monkeypatch.setattr(software, "_installed_version", lambda p: None if p == "pandas" else real(p))
    assert not any(r.startswith("pandas") for r in default_software_spec().pip)


def test_client_versions():
    versions = client_versions()
    assert tuple(versions) == CLUSTER_PACKAGES
    assert versions["python"] == platform.python_version()
    assert versions["distributed"] == DISTRIBUTED


def test_version_mismatches():
    client = {"python": "3.11.7", "dask": "2026.8.0", "distributed": "2026.8.0", "numpy": "2.0", "pandas": None, "toolz": "1.0.0"}
    cluster = {
        "python": "3.11.7.final.0",
        "dask": "2026.8.0",
        "distributed": "2025.1.0",
        "numpy": "2.0.0",
        "pandas": "2.2.0",
        "tornado": "6.4",
        "toolz": None,
    }
    assert version_mismatches(client, cluster) == [
        "distributed: client 2026.8.0, cluster 2025.1.0",
        "toolz: client 1.0.0, cluster not installed",
        "pandas: client not installed, cluster 2.2.0",
    ]
    assert version_mismatches({"python": "3.11.7"}, {"python": "3.11.9"}) == ["python: client 3.11.7, cluster 3.11.9"]
    assert version_mismatches(client_versions(), client_versions()) == []


# ------------------------------------------------------------------ shared store, several processes

_CHILD = """
import json, sys
from coiled_core import software
if sys.argv[1] == "create":
    env = software.create_software_environment("team/shared", pip=["numpy"])
    print(env.spec_hash())
else:
    env = software.get_software_info("team/shared")
    names = [e.name for e in software.list_software_environments()]
    print(json.dumps({"hash": env.spec_hash(), "names": names}))
"""


def test_processes_sharing_a_store_see_the_same_environments(tmp_path, store):
    def run(home: str, action: str) -> str:
        env = dict(os.environ, HOME=home, DASK_COILED__STORE=store)
        env.pop("XDG_DATA_HOME", None)
        env.pop("DASK_CONFIG", None)
        result = subprocess.run([sys.executable, "-c", _CHILD, action], check=False, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    (tmp_path / "home1").mkdir()
    (tmp_path / "home2").mkdir()
    created_hash = run(str(tmp_path / "home1"), "create")
    seen = json.loads(run(str(tmp_path / "home2"), "read"))
    assert seen == {"hash": created_hash, "names": ["examples/scaling-xgboost", "team/shared"]}
    assert get_software_info("team/shared").spec_hash() == created_hash


# ------------------------------------------------------------------ the CLI


def invoke(*args: str):
    return CliRunner().invoke(env_cli, list(args))


def test_cli_create_list_inspect_delete(tmp_path):
    result = invoke("create", "team/cli-env", "--pip", "numpy", "--pip", "pandas>=2")
    assert result.exit_code == 0, result.output
    assert "Created software environment 'team/cli-env' (pip" in result.output
    assert get_software_info("team/cli-env").pip == ["numpy", "pandas>=2", f"distributed=={DISTRIBUTED}"]

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy\n")
    assert invoke("create", "from-file", "--pip", str(requirements)).exit_code == 0
    assert get_software_info("alice/from-file").pip == ["numpy", f"distributed=={DISTRIBUTED}"]

    environment = tmp_path / "environment.yml"
    environment.write_text("dependencies: [numpy]\n")
    assert invoke("create", "conda-env", "--conda", str(environment)).exit_code == 0
    assert invoke("create", "image", "--container", "daskdev/dask:latest").exit_code == 0
    layered = invoke("create", "layered", "--container", "daskdev/dask:latest", "--pip", "xarray", "--post-build",
                     "echo hi", "--gpu-enabled", "--private", "--workspace", "team")
    assert layered.exit_code == 0, layered.output
    made = get_software_info("team/layered")
    assert made.container and made.pip == ["xarray"] and made.post_build == ["echo hi"] and made.gpu_enabled and made.private

    result = invoke("list")
    assert result.exit_code == 0, result.output
    for name in ("team/cli-env", "alice/from-file", "alice/conda-env", "alice/image", "examples/scaling-xgboost"):
        assert name in result.output
    assert "built-in" in result.output

    result = invoke("inspect", "team/cli-env")
    assert result.exit_code == 0, result.output
    assert "kind:     pip" in result.output
    assert f"python:   {PYTHON}" in result.output
    assert get_software_info("team/cli-env").spec_hash() in result.output
    assert "pandas>=2" in result.output

    result = invoke("delete", "team/cli-env")
    assert result.exit_code == 0 and "Deleted software environment 'team/cli-env'" in result.output
    assert "team/cli-env" not in invoke("list").output


def _one_line_error(result, pattern: str, exit_code: int = 1) -> None:
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert pattern in lines[0], lines[0]
    assert result.stdout == ""


def test_cli_errors_are_one_line():
    _one_line_error(invoke("inspect", "examples/scaling-xgbost"), "did you mean 'examples/scaling-xgboost'")
    _one_line_error(invoke("delete", "examples/scaling-xgboost"), "cannot be deleted")
    _one_line_error(invoke("create", "x"), "give pip, conda or container")
    _one_line_error(invoke("create", "x", "--pip", "numpy", "--container", "no such image"), "not an image reference")
    _one_line_error(invoke("create", "x", "--pip", "distributed<2.0"), "distributed >= 2.23.0")
    _one_line_error(invoke("create", "x", "--conda", "missing.yml"), "is not a file")
    _one_line_error(invoke("create", "bad name", "--pip", "numpy"), "not a valid software environment name")
    # Usage mistakes are one line too, with click's usage exit status (as the root `coiled` group).
    _one_line_error(invoke("create"), "Missing argument 'NAME'", exit_code=2)
    _one_line_error(invoke("frobnicate"), "No such command 'frobnicate'", exit_code=2)
