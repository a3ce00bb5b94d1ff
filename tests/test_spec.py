"""Resolving and validating ``coiled.Cluster`` parameters (``coiled_core.spec``).

Every test here is about the spec: defaults, precedence and validation. None starts a cluster;
the tests through the public ``coiled.Cluster`` only check that bad input fails before anything
exists.
"""

from __future__ import annotations

import inspect
import os

import dask.config
import pytest
from pydantic import BaseModel

import coiled
from coiled_core.errors import BackendNotFoundError, ClusterSpecError, CoiledError
from coiled_core.spec import NAME_PATTERN, ClusterSpec, resolve_cluster_spec, validate_backend_options
from conftest import agent_processes

GiB = 2**30


def spec_error(keywords, configuration_values=None) -> str:
    """The message of the ClusterSpecError that resolving ``keywords`` raises."""
    with pytest.raises(ClusterSpecError) as info:
        resolve_cluster_spec(keywords, configuration_values)
    assert isinstance(info.value, ValueError)
    return str(info.value)


# -- built-in defaults ------------------------------------------------------------------------


def test_builtin_defaults_match_the_reference():
    spec = resolve_cluster_spec({})
    assert isinstance(spec, ClusterSpec)
    assert spec.n_workers == 4
    assert spec.adaptive is None
    assert spec.worker_cpu == 4
    assert spec.worker_gpu == 0
    assert spec.worker_memory == 16 * GiB
    assert spec.scheduler_cpu == 1
    assert spec.scheduler_memory == 8 * GiB
    assert spec.worker_class == "distributed.Nanny"
    assert spec.scheduler_class == "distributed.Scheduler"
    assert spec.worker_options == {}
    assert spec.environ == {}
    assert spec.software is None
    assert spec.configuration is None
    assert spec.shutdown_on_close is None
    assert spec.idle_timeout == 1200
    assert spec.scheduler_options["idle_timeout"] == 1200
    assert spec.backend == "local"
    assert spec.backend_options == {}
    assert spec.timeout == 1200


def test_keywords_all_none_is_the_same_as_no_keywords():
    keywords = {
        key: None
        for key in inspect.signature(coiled.Cluster).parameters
        if key not in ("asynchronous", "wait_for_workers", "loop", "show_widget", "more")
    }
    spec = resolve_cluster_spec(keywords)
    defaults = resolve_cluster_spec({})
    assert spec.model_dump(exclude={"name"}) == defaults.model_dump(exclude={"name"})


def test_generated_names_are_unique_dns_labels():
    names = {resolve_cluster_spec({}).name for _ in range(5)}
    assert len(names) == 5
    for name in names:
        assert NAME_PATTERN.match(name), name
        assert 1 <= len(name) <= 63
    # The explicit name is kept as given.
    assert resolve_cluster_spec({"name": "production"}).name == "production"


def test_sizes_and_durations_are_parsed():
    spec = resolve_cluster_spec(
        {"worker_memory": "2 GiB", "scheduler_memory": 3 * GiB, "timeout": "5 minutes", "idle_timeout": 90}
    )
    assert spec.worker_memory == 2 * GiB
    assert spec.scheduler_memory == 3 * GiB
    assert spec.timeout == 300
    assert spec.idle_timeout == 90


# -- precedence: keyword > configuration > dask config > defaults ---------------------------

PRECEDENCE_CASES = [
    # key, dask config value, configuration value, keyword value, how each resolves
    ("worker_cpu", 2, 8, 16, {2: 2, 8: 8, 16: 16}),
    ("worker_memory", "4 GiB", "8 GiB", "32 GiB", {"4 GiB": 4 * GiB, "8 GiB": 8 * GiB, "32 GiB": 32 * GiB}),
    ("n_workers", 1, 2, 3, {1: 1, 2: 2, 3: 3}),
    (
        "scheduler_class",
        "distributed.scheduler.Scheduler",
        "distributed.deploy.local.Scheduler",
        "distributed.deploy.spec.Scheduler",
        None,
    ),
    ("scheduler_cpu", 2, 3, 4, None),
    ("timeout", "1 minute", "2 minutes", 30, {"1 minute": 60, "2 minutes": 120, 30: 30}),
]


@pytest.mark.parametrize("key, in_dask, in_configuration, in_keyword, resolved", PRECEDENCE_CASES)
@pytest.mark.parametrize("separator", ["-", "_"])
def test_precedence_key_by_key(key, in_dask, in_configuration, in_keyword, resolved, separator):
    def expect(value):
        return resolved[value] if resolved else value

    default = getattr(resolve_cluster_spec({}), key)
    assert default not in (expect(in_dask), expect(in_configuration), expect(in_keyword))

    dask_key = "coiled." + key.replace("_", separator)
    with dask.config.set({dask_key: in_dask}):
        # dask config beats the built-in default
        assert getattr(resolve_cluster_spec({}), key) == expect(in_dask)
        # a named configuration beats dask config
        assert getattr(resolve_cluster_spec({}, {key: in_configuration}), key) == expect(in_configuration)
        # a keyword left as None hides nothing
        assert getattr(resolve_cluster_spec({key: None}, {key: in_configuration}), key) == expect(in_configuration)
        assert getattr(resolve_cluster_spec({key: None}), key) == expect(in_dask)
        # an explicit keyword beats everything
        assert getattr(resolve_cluster_spec({key: in_keyword}, {key: in_configuration}), key) == expect(in_keyword)
        assert getattr(resolve_cluster_spec({key: in_keyword}), key) == expect(in_keyword)
    # Without the dask config setting, the configuration still beats the default.
    assert getattr(resolve_cluster_spec({}, {key: in_configuration}), key) == expect(in_configuration)
    assert getattr(resolve_cluster_spec({}), key) == default


def test_precedence_of_backend_options():
    assert resolve_cluster_spec({}).backend_options == {}
    with dask.config.set({"coiled.backend-options": {"local": {"host": "0.0.0.0"}, "aws": {"region": "x"}}}):
        # dask config's per-backend table: only the chosen backend's entry applies
        assert resolve_cluster_spec({}).backend_options == {"host": "0.0.0.0"}
        assert resolve_cluster_spec({"backend": "aws"}).backend_options == {"region": "x"}
        assert resolve_cluster_spec({"backend": "gcp"}).backend_options == {}
        # configuration beats dask config, keyword beats configuration, None hides nothing
        configured = {"backend_options": {"host": "10.0.0.1"}}
        assert resolve_cluster_spec({}, configured).backend_options == {"host": "10.0.0.1"}
        assert resolve_cluster_spec({"backend_options": None}, configured).backend_options == {"host": "10.0.0.1"}
        explicit = {"backend_options": {"host": "192.168.0.1"}}
        assert resolve_cluster_spec(explicit, configured).backend_options == {"host": "192.168.0.1"}
    with dask.config.set({"coiled.backend_options": {"local": {"directory": "/tmp/x"}}}):
        assert resolve_cluster_spec({}).backend_options == {"directory": "/tmp/x"}


def test_precedence_of_environ_and_worker_options():
    with dask.config.set({"coiled.environ": {"FROM": "dask"}, "coiled.worker-options": {"nthreads": 1}}):
        spec = resolve_cluster_spec({})
        assert spec.environ == {"FROM": "dask"}
        assert spec.worker_options == {"nthreads": 1}
        spec = resolve_cluster_spec({"environ": None}, {"environ": {"FROM": "configuration"}})
        assert spec.environ == {"FROM": "configuration"}
        spec = resolve_cluster_spec({"environ": {"FROM": "keyword"}}, {"environ": {"FROM": "configuration"}})
        assert spec.environ == {"FROM": "keyword"}


def test_precedence_of_idle_timeout():
    assert resolve_cluster_spec({}).idle_timeout == 1200
    with dask.config.set({"coiled.idle-timeout": "1 hour"}):
        assert resolve_cluster_spec({}).idle_timeout == 3600
        assert resolve_cluster_spec({}, {"idle_timeout": "2 hours"}).idle_timeout == 7200
        assert resolve_cluster_spec({"idle_timeout": None}, {"idle_timeout": "2 hours"}).idle_timeout == 7200
        assert resolve_cluster_spec({"idle_timeout": "3 hours"}, {"idle_timeout": "2 hours"}).idle_timeout == 10800
        # explicit scheduler_options' idle_timeout is as explicit as the shortcut
        explicit = {"scheduler_options": {"idle_timeout": "4 hours"}}
        assert resolve_cluster_spec(explicit, {"idle_timeout": "2 hours"}).idle_timeout == 4 * 3600
        # explicit scheduler_options without idle_timeout still get the resolved one
        spec = resolve_cluster_spec({"scheduler_options": {"dashboard": True}}, {"idle_timeout": "2 hours"})
        assert spec.scheduler_options == {"dashboard": True, "idle_timeout": 7200}
    with dask.config.set({"coiled.idle_timeout": 60}):
        assert resolve_cluster_spec({}).idle_timeout == 60


def test_explicit_idle_timeout_beats_scheduler_options_from_lower_layers():
    # Not a conflict: the keyword outranks a configuration's or dask config's scheduler_options.
    configured = {"scheduler_options": {"idle_timeout": "2 hours"}}
    assert resolve_cluster_spec({"idle_timeout": "1 hour"}, configured).idle_timeout == 3600
    assert resolve_cluster_spec({}, configured).idle_timeout == 7200
    with dask.config.set({"coiled.scheduler-options": {"idle_timeout": "2 hours"}}):
        assert resolve_cluster_spec({}).idle_timeout == 7200
        assert resolve_cluster_spec({"idle_timeout": "1 hour"}).idle_timeout == 3600
        # a configuration's idle_timeout outranks dask config's scheduler_options too
        assert resolve_cluster_spec({}, {"idle_timeout": "3 hours"}).idle_timeout == 10800


def test_keyword_none_never_hides_configuration_values():
    configured = {"n_workers": 7, "worker_cpu": 2, "worker_memory": "1 GiB", "worker_class": "distributed.Worker"}
    spec = resolve_cluster_spec({key: None for key in configured}, configured)
    assert spec.n_workers == 7
    assert spec.worker_cpu == 2
    assert spec.worker_memory == GiB
    assert spec.worker_class == "distributed.Worker"


# -- n_workers and adaptive ranges ------------------------------------------------------------


@pytest.mark.parametrize("value", [[2, 10], (2, 10)])
def test_n_workers_range_is_adaptive(value):
    spec = resolve_cluster_spec({"n_workers": value})
    assert spec.n_workers == 2
    assert spec.adaptive is not None
    assert spec.adaptive.minimum == 2
    assert spec.adaptive.maximum == 10


def test_n_workers_range_from_zero_and_fixed_count():
    spec = resolve_cluster_spec({"n_workers": [0, 3]})
    assert (spec.n_workers, spec.adaptive.minimum, spec.adaptive.maximum) == (0, 0, 3)
    spec = resolve_cluster_spec({"n_workers": 0})
    assert spec.n_workers == 0 and spec.adaptive is None
    spec = resolve_cluster_spec({}, {"n_workers": [1, 5]})
    assert (spec.n_workers, spec.adaptive.maximum) == (1, 5)


@pytest.mark.parametrize("value", [[3, 1], [-1, 2], [1, 4, 3], ["a", 2], [0, 0], [True, 2], [1.5, 2], [], [1, 2, 3, 4]])
def test_invalid_n_workers_ranges(value):
    message = spec_error({"n_workers": value})
    assert message.startswith("n_workers"), message
    assert "[minimum, maximum]" in message or "minimum <= maximum" in message


# -- idle_timeout shortcut ---------------------------------------------------------------------


def test_idle_timeout_shortcut():
    spec = resolve_cluster_spec({"idle_timeout": "2 hours"})
    assert spec.idle_timeout == 7200
    assert spec.scheduler_options == {"idle_timeout": 7200}


def test_idle_timeout_in_both_places_when_equal():
    spec = resolve_cluster_spec({"idle_timeout": "2 hours", "scheduler_options": {"idle_timeout": 7200}})
    assert spec.idle_timeout == 7200
    spec = resolve_cluster_spec({"idle_timeout": "120 minutes", "scheduler_options": {"idle_timeout": "2h"}})
    assert spec.scheduler_options["idle_timeout"] == 7200


def test_idle_timeout_in_both_places_when_different():
    message = spec_error({"idle_timeout": "1 hour", "scheduler_options": {"idle_timeout": "2 hours"}})
    assert "idle_timeout=" in message
    assert "scheduler_options" in message
    assert "1 hour" in message and "2 hours" in message


def test_bad_idle_timeout_in_scheduler_options():
    message = spec_error({"scheduler_options": {"idle_timeout": "soon"}})
    assert "idle_timeout" in message
    assert "'soon'" in message
    assert "scheduler_options" in message


@pytest.mark.parametrize("value", ["soon", 0, -10, True, [1]])
def test_bad_idle_timeout_shortcut(value):
    message = spec_error({"idle_timeout": value})
    assert message.startswith("idle_timeout"), message
    assert "duration" in message


def test_scheduler_options_idle_timeout_none_disables_it():
    spec = resolve_cluster_spec({"scheduler_options": {"idle_timeout": None}})
    assert spec.idle_timeout is None


# -- one clear error per bad parameter --------------------------------------------------------

BAD_INPUTS = [
    # keywords, the parameter the message must name, words saying what is valid
    ({"n_workers": -1}, "n_workers", [">= 0", "[minimum, maximum]"]),
    ({"n_workers": "4"}, "n_workers", [">= 0"]),
    ({"worker_cpu": 0}, "worker_cpu", [">= 1"]),
    ({"worker_cpu": "4"}, "worker_cpu", ["whole number", "'4'"]),
    ({"worker_cpu": True}, "worker_cpu", ["whole number", "True"]),
    ({"worker_cpu": 2.5}, "worker_cpu", ["whole number"]),
    ({"scheduler_cpu": 0}, "scheduler_cpu", [">= 1"]),
    ({"worker_memory": "lots"}, "worker_memory", ["'lots'", "16 GiB"]),
    ({"worker_memory": -5}, "worker_memory", ["positive", "16 GiB"]),
    ({"worker_memory": "0 B"}, "worker_memory", ["positive"]),
    ({"scheduler_memory": "lots"}, "scheduler_memory", ["16 GiB"]),
    ({"worker_gpu": -1}, "worker_gpu", [">= 0"]),
    ({"worker_gpu": True}, "worker_gpu", ["whole number"]),
    ({"worker_class": "no.such.Class"}, "worker_class", ["'no.such.Class'", "cannot be imported"]),
    ({"worker_class": "notdotted"}, "worker_class", ["'notdotted'", "module.Class"]),
    ({"scheduler_class": "distributed.NoSuchScheduler"}, "scheduler_class", ["NoSuchScheduler", "cannot be imported"]),
    ({"scheduler_class": "distributed.Client.x y"}, "scheduler_class", ["module.Class"]),
    ({"worker_options": {"nthread": 2}}, "worker_options", ["'nthread'", "'nthreads'"]),
    ({"worker_options": ["nthreads"]}, "worker_options", ["mapping"]),
    ({"scheduler_options": {"dashbord": True}}, "scheduler_options", ["'dashbord'", "'dashboard'"]),
    ({"scheduler_options": "idle"}, "scheduler_options", ["mapping"]),
    ({"environ": {"A": None}}, "environ", ["'A'", "string"]),
    ({"environ": {"1BAD": "x"}}, "environ", ["'1BAD'", "variable name"]),
    ({"environ": "A=1"}, "environ", ["mapping"]),
    ({"timeout": "never"}, "timeout", ["'never'", "seconds"]),
    ({"timeout": -1}, "timeout", ["-1", "seconds"]),
    ({"timeout": 0}, "timeout", ["positive"]),
    ({"name": "Bad Name!"}, "name", ["'Bad Name!'", "letters, digits, '_' and '-'"]),
    ({"name": "a/b"}, "name", ["letters, digits, '_' and '-'"]),
    ({"name": "x" * 129}, "name", ["128"]),
    # Patterns match the whole string: a trailing newline would break boot scripts and paths.
    ({"name": "prod\n"}, "name", ["letters, digits, '_' and '-'"]),
    ({"software": "coiled/env\n"}, "software", ["account/name"]),
    ({"configuration": "coiled/conf\n"}, "configuration", ["account/name"]),
    ({"environ": {"A\n": "x"}}, "environ", ["variable name"]),
    ({"worker_class": "distributed.Nanny\n"}, "worker_class", ["module.Class"]),
    ({"software": "not a valid/name/x"}, "software", ["account/name"]),
    ({"configuration": "a/b/c"}, "configuration", ["account/name"]),
    ({"shutdown_on_close": "yes"}, "shutdown_on_close", ["True, False or None", "'yes'"]),
    ({"backend": 3}, "backend", ["installed backend"]),
    ({"n_worker": 3}, "n_worker", ["not a coiled.Cluster parameter", "'n_workers'"]),
    ({"idle_timout": 3}, "idle_timout", ["'idle_timeout'"]),
]


@pytest.mark.parametrize(
    "keywords, parameter, valid", BAD_INPUTS, ids=[next(iter(k)) + "=" + repr(next(iter(k.values())))[:30] for k, _, _ in BAD_INPUTS]
)
def test_bad_input_raises_a_clear_cluster_spec_error(keywords, parameter, valid):
    message = spec_error(keywords)
    assert parameter in message, message
    # The parameter comes first, so the user sees what to fix without a traceback.
    assert message.lstrip("'").startswith(parameter), message
    for words in valid:
        assert words in message, (words, message)
    assert "\n" not in message  # one bad parameter, one line


def test_cluster_spec_error_is_a_value_error_and_coiled_error():
    assert issubclass(ClusterSpecError, ValueError)
    assert issubclass(ClusterSpecError, CoiledError)
    with pytest.raises(ValueError):
        resolve_cluster_spec({"worker_cpu": 0})


def test_several_bad_parameters_are_all_reported():
    message = spec_error({"worker_cpu": 0, "worker_memory": "lots", "timeout": "never"})
    for parameter in ("worker_cpu", "worker_memory", "timeout"):
        assert parameter in message


def test_bad_configuration_value_is_reported_like_a_keyword():
    message = spec_error({}, {"worker_cpu": "many"})
    assert message.startswith("worker_cpu") and "'many'" in message
    with dask.config.set({"coiled.worker-memory": "lots"}):
        assert spec_error({}).startswith("worker_memory")


def test_worker_options_accept_what_the_nanny_hands_to_its_worker():
    # distributed.Nanny passes keywords it does not take itself (lifetime, ...) to the Worker.
    spec = resolve_cluster_spec({"worker_options": {"nthreads": 2, "lifetime": "1 hour", "heartbeat_interval": "1s"}})
    assert spec.worker_options == {"nthreads": 2, "lifetime": "1 hour", "heartbeat_interval": "1s"}
    spec = resolve_cluster_spec({"worker_class": "distributed.Worker", "worker_options": {"lifetime": "1 hour"}})
    assert spec.worker_options == {"lifetime": "1 hour"}
    message = spec_error({"worker_class": "distributed.Worker", "worker_options": {"nthread": 2}})
    assert "'nthread'" in message and "'nthreads'" in message and "distributed.Worker" in message


def test_class_names_are_only_checked_for_form_in_another_software_environment():
    spec = resolve_cluster_spec({"worker_class": "no.such.Class", "software": "acct/env"})
    assert spec.worker_class == "no.such.Class"
    assert spec.software == "acct/env"
    spec = resolve_cluster_spec(
        {"scheduler_class": "my_pkg.MyScheduler", "worker_options": {"custom": 1}, "software": "env"}
    )
    assert spec.scheduler_class == "my_pkg.MyScheduler"
    # The form is still checked.
    message = spec_error({"worker_class": "notdotted", "software": "acct/env"})
    assert message.startswith("worker_class")


# -- backend_options against a backend's model ------------------------------------------------


class RegionOptions(BaseModel):
    region: str = "us-east-2"
    zones: int = 1


def test_validate_backend_options_accepts_good_options():
    options = validate_backend_options(RegionOptions, {"region": "eu-west-1"}, "cloud")
    assert isinstance(options, RegionOptions)
    assert options.region == "eu-west-1"
    assert validate_backend_options(RegionOptions, {}, "cloud").region == "us-east-2"


def test_validate_backend_options_suggests_close_field_names():
    with pytest.raises(ClusterSpecError) as info:
        validate_backend_options(RegionOptions, {"regoin": "x"}, "cloud")
    message = str(info.value)
    assert "'regoin'" in message
    assert "did you mean 'region'" in message
    assert "'cloud'" in message
    assert "region" in message and "zones" in message  # the valid options are listed


def test_validate_backend_options_wrong_field_type():
    with pytest.raises(ClusterSpecError) as info:
        validate_backend_options(RegionOptions, {"zones": "several"}, "cloud")
    assert str(info.value).startswith("backend_options.zones"), str(info.value)
    with pytest.raises(ClusterSpecError) as info:
        validate_backend_options(RegionOptions, {"region": ["a"], "zones": "several"}, "cloud")
    assert "backend_options.region" in str(info.value)
    assert "backend_options.zones" in str(info.value)


# -- through the public API, bad input starts nothing ------------------------------------------


def _agent_pids() -> set[int]:
    return {proc.pid for proc in agent_processes()}


@pytest.mark.parametrize(
    "keywords, error, words",
    [
        ({"n_workers": -1}, ClusterSpecError, "n_workers"),
        ({"worker_memory": "lots"}, ClusterSpecError, "worker_memory"),
        ({"backend": "nope"}, BackendNotFoundError, "'nope'"),
        ({"backend_options": {"hots": "x"}}, ClusterSpecError, "'host'"),
        ({"worker_options": {"nthread": 2}}, ClusterSpecError, "'nthreads'"),
        ({"idle_timeout": "1 hour", "scheduler_options": {"idle_timeout": 60}}, ClusterSpecError, "idle_timeout"),
        ({"wait_for_workers": 2.5}, ClusterSpecError, "wait_for_workers"),
    ],
)
def test_bad_input_through_cluster_starts_nothing(keywords, error, words, state_root):
    pids_before = _agent_pids()
    entries_before = set(os.listdir(state_root))
    with pytest.raises(error) as info:
        coiled.Cluster(name="must-not-start", **keywords)
    assert isinstance(info.value, CoiledError)
    assert words in str(info.value)
    assert _agent_pids() <= pids_before
    assert set(os.listdir(state_root)) == entries_before
    assert "must-not-start" not in os.listdir(state_root)


# -- the public signature ----------------------------------------------------------------------

REFERENCE_KEYWORDS = [
    "name",
    "n_workers",
    "worker_cpu",
    "worker_gpu",
    "worker_memory",
    "scheduler_cpu",
    "scheduler_memory",
    "software",
    "worker_class",
    "worker_options",
    "scheduler_class",
    "scheduler_options",
    "idle_timeout",
    "environ",
    "shutdown_on_close",
    "backend",
    "backend_options",
    "configuration",
    "asynchronous",
    "timeout",
]


LIFECYCLE_KEYWORDS = ["wait_for_workers", "no_client_timeout", "cluster_timeout", "security"]
MODERN_KEYWORDS = [
    "region",
    "worker_vm_types",
    "scheduler_vm_types",
    "spot_policy",
    "tags",
    "arm",
    "worker_disk_size",
    "scheduler_disk_size",
    "allow_ssh",
    "allow_ingress_from",
    "use_best_zone",
    "scheduler_gpu",
    "worker_gpu_type",
    "container",
    "package_sync",
    "workspace",
]


def test_cluster_signature_has_the_reference_keywords():
    params = inspect.signature(coiled.Cluster).parameters
    names = list(params)
    assert names[: len(REFERENCE_KEYWORDS)] == REFERENCE_KEYWORDS
    for key in REFERENCE_KEYWORDS:
        expected = False if key == "asynchronous" else None
        assert params[key].default is expected, key
    assert params["name"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    for key in names[1:-1]:
        assert params[key].kind is inspect.Parameter.KEYWORD_ONLY, key
    # Anything else (package_sync's variants, or a typo) is caught to be refused as a
    # ClusterSpecError naming it, never a bare TypeError.
    assert params[names[-1]].kind is inspect.Parameter.VAR_KEYWORD
    # Coiled's lifecycle keywords, LocalCluster's security, the event loop, today's keywords.
    assert set(names[:-1]) - set(REFERENCE_KEYWORDS) == set(LIFECYCLE_KEYWORDS) | {"loop", "show_widget"} | set(
        MODERN_KEYWORDS
    ) | {"compute_purchase_option", "account"}


def test_cluster_rejects_positional_arguments_after_name():
    pids_before = _agent_pids()
    with pytest.raises(TypeError):
        coiled.Cluster("x", 4)
    assert _agent_pids() <= pids_before


def test_spec_keywords_match_the_signature():
    from coiled_core.spec import SPEC_KEYWORDS

    assert list(SPEC_KEYWORDS) == [k for k in REFERENCE_KEYWORDS if k != "asynchronous"] + [
        k for k in LIFECYCLE_KEYWORDS if k != "wait_for_workers"
    ] + MODERN_KEYWORDS


def test_workspace_and_account_are_the_account_of_bare_names():
    assert resolve_cluster_spec({"software": "env", "workspace": "team"}).software == "team/env"
    assert resolve_cluster_spec({"software": "env", "account": "team"}).software == "team/env"
    assert resolve_cluster_spec({"software": "other/env", "workspace": "team"}).software == "other/env"
    with pytest.raises(ClusterSpecError, match="account='a' and workspace='b' disagree"):
        resolve_cluster_spec({"account": "a", "workspace": "b"})


def test_todays_keywords_are_validated_and_normalised():
    spec = resolve_cluster_spec(
        {"worker_vm_types": "m7i.xlarge", "worker_disk_size": "100 GiB", "scheduler_disk_size": 50,
         "tags": {"cost-center": 42}, "compute_purchase_option": "spot", "n_workers": [1, 2, 5],
         "worker_cpu": [2, 8], "worker_memory": ["4 GiB", "16 GiB"], "environ": {"N": 3, "FLAG": False},
         "package_sync": True, "package_sync_ignore": ["torch"]}
    )
    assert spec.worker_vm_types == ["m7i.xlarge"] and spec.worker_disk_size == 100 and spec.scheduler_disk_size == 50
    assert spec.tags == {"cost-center": "42"} and spec.spot_policy == "spot"
    assert (spec.n_workers, spec.adaptive.minimum, spec.adaptive.maximum) == (2, 1, 5)
    assert (spec.worker_cpu, spec.worker_cpu_max) == (2, 8)
    assert (spec.worker_memory, spec.worker_memory_max) == (4 * 2**30, 16 * 2**30)
    assert spec.environ == {"N": "3", "FLAG": "False"}
    assert spec.package_sync == {"enabled": True, "package_sync_ignore": ["torch"]}


@pytest.mark.parametrize(
    "keywords, message",
    [
        ({"spot_policy": "cheap"}, "spot_policy: 'cheap' is not a spot policy"),
        ({"worker_vm_types": []}, "worker_vm_types: must be an instance type name"),
        ({"worker_disk_size": "lots"}, "worker_disk_size: 'lots' is not a size"),
        ({"tags": ["a"]}, "tags: must be a mapping"),
        ({"arm": "yes"}, "arm: must be True or False"),
        ({"worker_cpu": [4, 2]}, r"worker_cpu: \[4, 2\] is not a range"),
        ({"region": ""}, "region: must be a non-empty string"),
    ],
)
def test_todays_keywords_with_bad_values_name_the_keyword(keywords, message):
    with pytest.raises(ClusterSpecError, match=message):
        resolve_cluster_spec(keywords)


def test_unknown_keywords_and_a_number_for_the_name_are_cluster_spec_errors():
    with pytest.raises(ClusterSpecError, match=r"'worker_vm_type' is not a coiled.Cluster parameter; did you mean 'worker_vm_types'\?"):
        coiled.Cluster(worker_vm_type="m5.large")
    with pytest.raises(ClusterSpecError, match=r"first positional argument .* name.*n_workers=10"):
        coiled.Cluster(10)
