"""Cluster configurations (``coiled_core.configurations``) and ``coiled configuration`` commands.

No cluster starts here: configurations are validated with ``resolve_cluster_spec`` and kept in
the store, and precedence is checked on the resolved spec.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import dask.config
import pytest
import yaml
from click.testing import CliRunner

from coiled_core import configurations
from coiled_core.cli_configuration import configuration as configuration_group
from coiled_core.configurations import (
    BUILTIN_DEFAULT,
    BuiltinConfigurationError,
    ClusterConfiguration,
    ConfigurationNotFoundError,
    configuration_values,
    create_cluster_configuration,
    delete_cluster_configuration,
    get_cluster_configuration,
    list_cluster_configurations,
)
from coiled_core.errors import ClusterSpecError, CoiledError
from coiled_core.spec import SPEC_KEYWORDS, resolve_cluster_spec
from coiled_core.store import Store

REPO_ROOT = Path(__file__).resolve().parent.parent
GiB = 2**30


@pytest.fixture(autouse=True)
def store(tmp_path) -> Store:
    """A store of this test's own, and a fixed default account."""
    with dask.config.set({"coiled.store": str(tmp_path / "store"), "coiled.account": "team"}):
        yield Store()


def stored_keys(store: Store) -> list[str]:
    return [f"{a}/{n}" for a in store.list("configurations") for n in store.list(f"configurations/{a}")]


# -- create, get, list, delete ------------------------------------------------------------------


def test_create_get_list_delete(store):
    created = create_cluster_configuration(
        "team/gpu-large", software="team/gpu-env", n_workers=[2, 10], worker_gpu=1, worker_memory="64 GiB"
    )
    assert isinstance(created, ClusterConfiguration)
    assert created.name == "team/gpu-large"
    assert (created.account, created.short_name) == ("team", "gpu-large")
    assert not created.builtin
    # Exactly the given values, as given: no defaults, no normalised sizes.
    assert created.values == {"software": "team/gpu-env", "n_workers": [2, 10], "worker_gpu": 1, "worker_memory": "64 GiB"}
    assert created.software == "team/gpu-env"
    assert created.created_at is not None and created.created_at == created.updated_at

    got = get_cluster_configuration("team/gpu-large")
    assert got == created
    assert get_cluster_configuration("gpu-large") == created  # bare name: the default account
    assert get_cluster_configuration("Team/GPU-Large") == created  # names are case-insensitive

    # The store layout: one JSON document at configurations/<account>/<name>.json.
    document = json.loads(store.read("configurations/team/gpu-large.json"))
    assert document["name"] == "team/gpu-large"
    assert document["values"] == created.values
    assert stored_keys(store) == ["team/gpu-large.json"]

    create_cluster_configuration("team/small", n_workers=1)
    create_cluster_configuration("other/thing", worker_cpu=2)
    assert [c.name for c in list_cluster_configurations()] == [BUILTIN_DEFAULT, "team/gpu-large", "team/small"]
    assert [c.name for c in list_cluster_configurations("other")] == ["other/thing"]
    assert [c.name for c in list_cluster_configurations("coiled")] == [BUILTIN_DEFAULT]
    assert list_cluster_configurations("nobody") == []

    assert delete_cluster_configuration("gpu-large") is None
    assert [c.name for c in list_cluster_configurations()] == [BUILTIN_DEFAULT, "team/small"]
    with pytest.raises(ConfigurationNotFoundError):
        get_cluster_configuration("team/gpu-large")
    with pytest.raises(ConfigurationNotFoundError):
        delete_cluster_configuration("team/gpu-large")


def test_none_means_not_given():
    created = create_cluster_configuration("sparse", worker_cpu=None, worker_memory="2 GiB", software=None)
    assert created.values == {"worker_memory": "2 GiB"}
    assert get_cluster_configuration("sparse").values == {"worker_memory": "2 GiB"}


def test_overwrite_replaces_all_values_and_keeps_created_at():
    first = create_cluster_configuration("shape", worker_cpu=2, worker_memory="4 GiB")
    second = create_cluster_configuration("shape", n_workers=7)
    assert second.values == {"n_workers": 7}  # replaced, not merged
    assert second.created_at == first.created_at
    assert second.updated_at >= first.updated_at
    assert get_cluster_configuration("shape") == second
    assert [c.name for c in list_cluster_configurations()] == [BUILTIN_DEFAULT, "team/shape"]


def test_unknown_configuration_lists_close_matches():
    create_cluster_configuration("team/gpu-large", worker_gpu=1)
    create_cluster_configuration("other/gpu-large", worker_gpu=2)
    with pytest.raises(ConfigurationNotFoundError) as info:
        get_cluster_configuration("gpu-larg")
    assert isinstance(info.value, CoiledError) and isinstance(info.value, LookupError)
    message = str(info.value)
    assert "'team/gpu-larg'" in message
    assert "'team/gpu-large'" in message and "'other/gpu-large'" in message
    with pytest.raises(ConfigurationNotFoundError, match="team/gpu-large"):
        delete_cluster_configuration("gpu-larg")
    with pytest.raises(ConfigurationNotFoundError, match="coiled/default"):
        configuration_values("coiled/defualt")
    with pytest.raises(ConfigurationNotFoundError) as info:
        get_cluster_configuration("zzzzzz")
    assert "did you mean" not in str(info.value)


def test_unreadable_documents_are_errors_on_get_and_skipped_by_list(store):
    create_cluster_configuration("fine", n_workers=1)
    store.write("configurations/team/broken.json", b"{not json")
    store.write("configurations/team/odd.json", json.dumps({"values": {"wrker_cpu": 1}}).encode())
    store.write("configurations/team/partial.json.tmp-123", b"{")  # a write in progress
    with pytest.raises(ClusterSpecError, match="'team/broken'.*cannot be read"):
        get_cluster_configuration("broken")
    with pytest.raises(ClusterSpecError, match="wrker_cpu"):
        configuration_values("odd")
    with pytest.warns(UserWarning, match="cannot be read"):
        assert [c.name for c in list_cluster_configurations()] == [BUILTIN_DEFAULT, "team/fine"]
    # Overwriting repairs a broken document.
    assert create_cluster_configuration("broken", n_workers=2).values == {"n_workers": 2}


# -- names and accounts -------------------------------------------------------------------------


def test_bare_name_gets_account_from_dask_config(store):
    with dask.config.set({"coiled.account": "Data-Team"}):
        created = create_cluster_configuration("nightly", n_workers=3)
        assert created.name == "data-team/nightly"
        assert get_cluster_configuration("nightly") == created
        assert configurations.default_account() == "data-team"
        assert [c.name for c in list_cluster_configurations()] == [BUILTIN_DEFAULT, "data-team/nightly"]
    assert store.exists("configurations/data-team/nightly.json")
    # Outside that setting, the bare name is in another account.
    with pytest.raises(ConfigurationNotFoundError):
        get_cluster_configuration("nightly")
    assert get_cluster_configuration("data-team/nightly") == created


def test_bare_name_falls_back_to_the_user_name(store, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "Jane.Doe@Example")
    with dask.config.set({"coiled.account": None}):
        assert configurations.default_account() == "jane-doe-example"
        created = create_cluster_configuration("mine", worker_cpu=2)
        assert created.name == "jane-doe-example/mine"
        assert get_cluster_configuration("mine") == created
    assert store.exists("configurations/jane-doe-example/mine.json")

    monkeypatch.setattr("getpass.getuser", lambda: "..")
    with dask.config.set({"coiled.account": None}):
        assert configurations.default_account() == "user"

    def no_user() -> str:
        raise OSError("no user name")

    monkeypatch.setattr("getpass.getuser", no_user)
    with dask.config.set({"coiled.account": None}):
        assert configurations.default_account() == "user"


def test_invalid_account_in_dask_config():
    with dask.config.set({"coiled.account": "not valid!"}), pytest.raises(ClusterSpecError, match="coiled.account"):
        create_cluster_configuration("x", n_workers=1)


@pytest.mark.parametrize(
    "name",
    ["", "/x", "team/", "a/b/c", "-x", "x y", "team/.hidden", "../x", "x/..", "team/na me", "ü", "a" * 200, 5, None],
)
def test_invalid_names(store, name):
    with pytest.raises(ClusterSpecError, match="not a valid configuration name"):
        create_cluster_configuration(name, n_workers=1)
    with pytest.raises(ClusterSpecError, match="not a valid configuration name"):
        get_cluster_configuration(name)
    with pytest.raises(ClusterSpecError, match="not a valid configuration name"):
        delete_cluster_configuration(name)
    assert stored_keys(store) == []


def test_invalid_account_to_list():
    with pytest.raises(ClusterSpecError, match="not a valid account"):
        list_cluster_configurations("bad/account")


# -- validation -----------------------------------------------------------------------------------


def test_unknown_parameter_names_a_close_match(store):
    with pytest.raises(ClusterSpecError, match=r"'worker_memroy' is not a coiled.Cluster parameter; did you mean 'worker_memory'\?"):
        create_cluster_configuration("x", worker_memroy="8 GiB")
    with pytest.raises(ClusterSpecError, match="'flavour' is not a coiled.Cluster parameter$"):
        create_cluster_configuration("x", flavour="vanilla")
    with pytest.raises(ClusterSpecError, match="configurations do not nest"):
        create_cluster_configuration("x", configuration="team/other")
    assert stored_keys(store) == []


def test_every_cluster_parameter_but_name_and_configuration_is_accepted():
    assert set(configurations.CONFIGURATION_KEYWORDS) == set(SPEC_KEYWORDS) - {"name", "configuration"}
    values = {
        "n_workers": [1, 3],
        "worker_cpu": 2,
        "worker_gpu": 0,
        "worker_memory": "2 GiB",
        "scheduler_cpu": 1,
        "scheduler_memory": "1 GiB",
        "software": "team/env",
        "worker_class": "distributed.Nanny",
        "worker_options": {"nthreads": 2},
        "scheduler_class": "distributed.Scheduler",
        "scheduler_options": {"idle_timeout": "1 hour"},
        "idle_timeout": "1 hour",
        "environ": {"FOO": "bar"},
        "shutdown_on_close": False,
        "backend": "local",
        "backend_options": {"host": "127.0.0.1"},
        "timeout": "5 minutes",
        "no_client_timeout": "10 minutes",
        "cluster_timeout": "1 day",
        "security": False,
        # Today's Coiled keywords.
        "region": "us-east-2",
        "worker_vm_types": ["m7i.xlarge"],
        "scheduler_vm_types": ["m7i.large"],
        "spot_policy": "spot_with_fallback",
        "tags": {"team": "data"},
        "arm": False,
        "worker_disk_size": 100,
        "scheduler_disk_size": "50 GiB",
        "container": "ghcr.io/dask/dask:latest",
        "package_sync": True,
        "allow_ssh": False,
        "allow_ingress_from": "10.0.0.0/8",
        "use_best_zone": True,
        "scheduler_gpu": False,
        "worker_gpu_type": "nvidia-tesla-t4",
        "workspace": "team",
    }
    assert set(values) == set(configurations.CONFIGURATION_KEYWORDS)
    assert create_cluster_configuration("everything", **values).values == values
    assert get_cluster_configuration("everything").values == values


def test_bad_value_raises_the_cluster_error_and_stores_nothing(store):
    with pytest.raises(ClusterSpecError) as info:
        create_cluster_configuration("x", worker_memory="lots")
    assert str(info.value) == "worker_memory: 'lots' is not a size; give a string such as '16 GiB' or a number of bytes"
    assert stored_keys(store) == []

    # A failed overwrite keeps the configuration that was there.
    kept = create_cluster_configuration("x", worker_memory="8 GiB")
    for bad in [
        {"worker_memory": "lots"},
        {"n_workers": [5, 2]},
        {"worker_cpu": 0},
        {"idle_timeout": "soon"},
        {"idle_timeout": "1 hour", "scheduler_options": {"idle_timeout": "2 hours"}},
        {"environ": {"1BAD": "x"}},
        {"worker_options": {"nthreadz": 2}},
        {"backend_options": {"hots": "127.0.0.1"}},
    ]:
        with pytest.raises(ClusterSpecError):
            create_cluster_configuration("x", **bad)
    with pytest.raises(ClusterSpecError, match="did you mean 'host'"):
        create_cluster_configuration("x", backend_options={"hots": "127.0.0.1"})
    assert get_cluster_configuration("x") == kept


def test_backend_options_of_a_backend_not_installed_here_are_kept():
    created = create_cluster_configuration("cloud", backend="not-installed-here", backend_options={"region": "x"})
    assert created.values == {"backend": "not-installed-here", "backend_options": {"region": "x"}}


@pytest.mark.parametrize(
    "values, why",
    [
        ({"worker_options": {"thing": object()}}, "worker_options: cannot be saved"),
        ({"worker_options": {"nthreads": float("nan")}}, "not a finite number"),
        ({"worker_options": {1: "x"}}, "key 1 is not a string"),
        ({"worker_memory": b"8 GiB"}, "worker_memory: cannot be saved"),
    ],
)
def test_values_that_cannot_be_saved_are_rejected(store, values, why):
    with pytest.raises(ClusterSpecError, match=why):
        create_cluster_configuration("x", **values)
    assert stored_keys(store) == []


def test_tuples_are_saved_as_lists():
    assert create_cluster_configuration("x", n_workers=(2, 5)).values == {"n_workers": [2, 5]}
    assert get_cluster_configuration("x").values == {"n_workers": [2, 5]}


# -- coiled/default and configuration_values ------------------------------------------------------


def test_builtin_default():
    default = get_cluster_configuration("coiled/default")
    assert default.builtin and default.name == BUILTIN_DEFAULT
    assert default.created_at is None and default.updated_at is None
    assert default.values == {
        "n_workers": 4,
        "worker_cpu": 4,
        "worker_gpu": 0,
        "worker_memory": "16 GiB",
        "scheduler_cpu": 1,
        "scheduler_memory": "8 GiB",
        "worker_class": "distributed.Nanny",
        "scheduler_class": "distributed.Scheduler",
        "idle_timeout": "20 minutes",
        "backend": "local",
    }
    # Its values are the built-in defaults: resolving with them changes nothing.
    assert resolve_cluster_spec({"name": "x"}, default.values) == resolve_cluster_spec({"name": "x"})
    # A bare "default" is in the default account, not the built-in one.
    with pytest.raises(ConfigurationNotFoundError):
        get_cluster_configuration("default")


def test_builtin_default_cannot_be_deleted_or_overwritten(store):
    with pytest.raises(BuiltinConfigurationError, match="built in and cannot be deleted"):
        delete_cluster_configuration("coiled/default")
    with pytest.raises(BuiltinConfigurationError, match="built in and cannot be overwritten"):
        create_cluster_configuration("Coiled/Default", n_workers=1)
    assert isinstance(BuiltinConfigurationError("x"), CoiledError)
    assert stored_keys(store) == []
    assert get_cluster_configuration("coiled/default").builtin


def test_configuration_values():
    assert configuration_values(None) == {}
    # coiled/default holds the built-in defaults, which rank below dask config: no values.
    assert configuration_values("coiled/default") == {}
    create_cluster_configuration("shape", worker_cpu=2, scheduler_options={"idle_timeout": "1 hour"})
    values = configuration_values("shape")
    assert values == {"worker_cpu": 2, "scheduler_options": {"idle_timeout": "1 hour"}}
    values["scheduler_options"]["idle_timeout"] = "changed"  # a copy
    assert configuration_values("team/shape")["scheduler_options"] == {"idle_timeout": "1 hour"}
    with pytest.raises(ConfigurationNotFoundError):
        configuration_values("missing")


def test_coiled_default_does_not_hide_dask_config():
    with dask.config.set({"coiled.worker-cpu": 2, "coiled.idle-timeout": "5 minutes", "coiled.backend-options": {"local": {"host": "127.0.0.2"}}}):
        spec = resolve_cluster_spec({}, configuration_values("coiled/default"))
        assert spec.worker_cpu == 2
        assert spec.idle_timeout == 300
        assert spec.backend_options == {"host": "127.0.0.2"}


# -- precedence, key by key: keyword > configuration > dask config > default --------------------

PRECEDENCE_CASES = [
    # key, dask config {key: value}, configuration value, keyword value, read from the spec, expected
    ("worker_cpu", {"coiled.worker-cpu": 2}, 8, 16, lambda s: s.worker_cpu, {"dask": 2, "conf": 8, "kw": 16, "default": 4}),
    (
        "worker_memory",
        {"coiled.worker_memory": "4 GiB"},
        "8 GiB",
        32 * GiB,
        lambda s: s.worker_memory,
        {"dask": 4 * GiB, "conf": 8 * GiB, "kw": 32 * GiB, "default": 16 * GiB},
    ),
    (
        "n_workers",
        {"coiled.n-workers": 1},
        [2, 10],
        3,
        lambda s: (s.n_workers, s.adaptive and (s.adaptive.minimum, s.adaptive.maximum)),
        {"dask": (1, None), "conf": (2, (2, 10)), "kw": (3, None), "default": (4, None)},
    ),
    (
        "idle_timeout",
        {"coiled.idle-timeout": "30 minutes"},
        "1 hour",
        "2 hours",
        lambda s: s.idle_timeout,
        {"dask": 1800, "conf": 3600, "kw": 7200, "default": 1200},
    ),
    (
        "idle_timeout",
        # A configuration's idle_timeout also beats idle_timeout inside dask config's scheduler-options.
        {"coiled.scheduler-options": {"idle_timeout": "30 minutes"}},
        "1 hour",
        "2 hours",
        lambda s: s.idle_timeout,
        {"dask": 1800, "conf": 3600, "kw": 7200, "default": 1200},
    ),
    (
        "scheduler_options",
        {"coiled.scheduler-options": {"idle_timeout": "30 minutes"}},
        {"idle_timeout": "1 hour"},
        {"idle_timeout": "2 hours"},
        lambda s: s.idle_timeout,
        {"dask": 1800, "conf": 3600, "kw": 7200, "default": 1200},
    ),
    (
        "backend_options",
        {"coiled.backend-options": {"local": {"host": "127.0.0.2"}}},
        {"host": "127.0.0.3"},
        {"host": "127.0.0.4"},
        lambda s: s.backend_options.get("host"),
        {"dask": "127.0.0.2", "conf": "127.0.0.3", "kw": "127.0.0.4", "default": None},
    ),
    (
        "software",
        {"coiled.software": "team/from-dask"},
        "team/from-configuration",
        "team/from-keyword",
        lambda s: s.software,
        {"dask": "team/from-dask", "conf": "team/from-configuration", "kw": "team/from-keyword", "default": None},
    ),
]


@pytest.mark.parametrize(
    "key, dask_setting, in_configuration, in_keyword, read, expected",
    PRECEDENCE_CASES,
    ids=[f"{case[0]}-{next(iter(case[1]))}" for case in PRECEDENCE_CASES],
)
def test_precedence_key_by_key(key, dask_setting, in_configuration, in_keyword, read, expected):
    create_cluster_configuration("precedence", **{key: in_configuration})
    values = configuration_values("precedence")
    assert values == {key: json.loads(json.dumps(in_configuration))}

    # Without dask config: the configuration beats the built-in default.
    assert read(resolve_cluster_spec({})) == expected["default"]
    assert read(resolve_cluster_spec({}, values)) == expected["conf"]
    with dask.config.set(dask_setting):
        # dask config beats the built-in default ...
        assert read(resolve_cluster_spec({})) == expected["dask"]
        assert read(resolve_cluster_spec({}, configuration_values(None))) == expected["dask"]
        assert read(resolve_cluster_spec({}, configuration_values("coiled/default"))) == expected["dask"]
        # ... a configuration beats dask config ...
        assert read(resolve_cluster_spec({}, values)) == expected["conf"]
        # ... a keyword left as None hides nothing ...
        assert read(resolve_cluster_spec({key: None}, values)) == expected["conf"]
        assert read(resolve_cluster_spec({k: None for k in SPEC_KEYWORDS}, values)) == expected["conf"]
        # ... and an explicit keyword beats everything.
        assert read(resolve_cluster_spec({key: in_keyword}, values)) == expected["kw"]


def test_a_configuration_only_sets_its_own_keys():
    create_cluster_configuration("partial", worker_memory="8 GiB", backend_options={"host": "127.0.0.3"})
    values = configuration_values("partial")
    settings = {
        "coiled.worker-cpu": 2,
        "coiled.worker-memory": "4 GiB",
        "coiled.n-workers": 1,
        "coiled.idle-timeout": "30 minutes",
        "coiled.backend-options": {"local": {"host": "127.0.0.2"}},
    }
    with dask.config.set(settings):
        spec = resolve_cluster_spec({"n_workers": 6, "worker_memory": None}, values)
    assert spec.n_workers == 6  # keyword
    assert spec.worker_memory == 8 * GiB  # configuration
    assert spec.backend_options == {"host": "127.0.0.3"}  # configuration
    assert spec.worker_cpu == 2  # dask config
    assert spec.idle_timeout == 1800  # dask config
    assert spec.scheduler_memory == 8 * GiB  # built-in default


# -- a store shared between users -----------------------------------------------------------------


def _run(code: str, home: Path, store_url: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_") and k not in ("XDG_DATA_HOME", "XDG_CONFIG_HOME")}
    env.update({"HOME": str(home), "USER": "shared-user", "LOGNAME": "shared-user"})
    if store_url is not None:
        env["DASK_COILED__STORE"] = store_url
    home.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_two_homes_share_configurations_through_one_store(tmp_path):
    shared = str(tmp_path / "shared-store")
    created = _run(
        """
        import json
        from coiled_core.configurations import create_cluster_configuration
        c = create_cluster_configuration("team-shape", n_workers=[1, 3], worker_memory="2 GiB")
        print(json.dumps(c.model_dump(mode="json")))
        """,
        tmp_path / "home-a",
        shared,
    )
    seen = _run(
        """
        import json
        from coiled_core.configurations import get_cluster_configuration, list_cluster_configurations
        names = [c.name for c in list_cluster_configurations()]
        print(json.dumps({"names": names, "got": get_cluster_configuration("team-shape").model_dump(mode="json")}))
        """,
        tmp_path / "home-b",
        shared,
    )
    created, seen = json.loads(created), json.loads(seen)
    assert created["name"] == "shared-user/team-shape"
    assert seen["names"] == ["coiled/default", "shared-user/team-shape"]
    assert seen["got"] == created
    assert created["values"] == {"n_workers": [1, 3], "worker_memory": "2 GiB"}
    # Kept in the shared store, not under either home.
    assert (tmp_path / "shared-store" / "v1" / "configurations" / "shared-user" / "team-shape.json").exists()
    assert not any(p.name == "team-shape.json" for home in ("home-a", "home-b") for p in (tmp_path / home).rglob("*"))

    # Without the shared store, a user sees only the per-user default store under their HOME.
    alone = _run(
        """
        from coiled_core.configurations import list_cluster_configurations
        print([c.name for c in list_cluster_configurations()])
        """,
        tmp_path / "home-c",
        None,
    )
    assert alone == "['coiled/default']"


# -- command line ---------------------------------------------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(configuration_group, list(args))


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_create_show_list_delete():
    result = invoke(
        "create",
        "gpu-large",
        "--set",
        "n_workers=[2,10]",
        "--set",
        'worker_memory="8 GiB"',
        "--set",
        "worker-cpu=2",
        "--set",
        "scheduler_options={idle_timeout: 2 hours}",
        "--set",
        "environ={FOO: bar}",
        "--software",
        "team/env",
    )
    assert result.exit_code == 0, result.output
    assert "team/gpu-large" in result.stdout
    expected = {
        "n_workers": [2, 10],
        "worker_memory": "8 GiB",
        "worker_cpu": 2,
        "scheduler_options": {"idle_timeout": "2 hours"},
        "environ": {"FOO": "bar"},
        "software": "team/env",
    }
    assert get_cluster_configuration("team/gpu-large").values == expected

    shown = invoke("show", "gpu-large")
    assert shown.exit_code == 0, shown.output
    document = yaml.safe_load(shown.stdout)
    assert document["name"] == "team/gpu-large"
    assert document["values"] == expected

    default = yaml.safe_load(invoke("show", "coiled/default").stdout)
    assert default["builtin"] is True and default["values"]["worker_memory"] == "16 GiB"

    listed = invoke("list")
    assert listed.exit_code == 0, listed.output
    assert "coiled/default" in listed.stdout and "team/gpu-large" in listed.stdout
    assert "n_workers=[2, 10]" in listed.stdout
    assert invoke("list", "--account", "nobody").stdout.strip() == "No cluster configurations in account 'nobody'."

    deleted = invoke("delete", "gpu-large")
    assert deleted.exit_code == 0, deleted.output
    assert "team/gpu-large" in deleted.stdout
    assert "team/gpu-large" not in invoke("list").stdout


def test_cli_overwrites_and_keeps_unparseable_text_as_text():
    assert invoke("create", "x", "--set", "n_workers=3").exit_code == 0
    assert invoke("create", "x", "--set", "environ={D: '2024-01-01'}", "--set", "software=team/env").exit_code == 0
    assert get_cluster_configuration("x").values == {"environ": {"D": "2024-01-01"}, "software": "team/env"}


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("show", "missing"), ["no cluster configuration is named", "team/missing"]),
        (("delete", "missing"), ["no cluster configuration is named"]),
        (("delete", "coiled/default"), ["built in"]),
        (("create", "coiled/default", "--set", "n_workers=1"), ["built in"]),
        (("create", "x", "--set", "worker_memory=lots"), ["worker_memory: 'lots' is not a size"]),
        (("create", "x", "--set", "worker_memroy=8"), ["did you mean 'worker_memory'?"]),
        (("create", "x", "--set", "n_workers"), ["'n_workers' is not KEY=VALUE"]),
        (("create", "x", "--set", "n_workers=1", "--set", "n_workers=2"), ["more than once"]),
        (("create", "x", "--software", "a/b", "--set", "software=c/d"), ["disagree"]),
        (("create", "bad name"), ["not a valid configuration name"]),
        (("create",), ["Missing argument 'NAME'"]),
        (("list", "--account", "bad/account"), ["not a valid account"]),
        (("frobnicate",), ["No such command"]),
    ],
)
def test_cli_errors_are_one_line(args, fragments, store):
    assert_one_line_error(invoke(*args), *fragments)
    assert stored_keys(store) == []


def test_cli_errors_are_one_line_under_a_parent_group():
    @click.group()
    def root() -> None:
        pass

    root.add_command(configuration_group)
    result = CliRunner().invoke(root, ["configuration", "show", "missing"])
    assert_one_line_error(result, "no cluster configuration is named")
