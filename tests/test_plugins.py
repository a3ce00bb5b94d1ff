"""The plugin system: discovery through entry points, isolation, extensions and failure modes.

Every plugin here is a fake distribution: a ``*.dist-info`` directory written into ``tmp_path``
next to the plugin's module, with ``tmp_path`` put on ``sys.path``. Nothing is installed.
Module names carry a per-test random suffix because Python caches imports.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap
import uuid
import warnings
from pathlib import Path

import pluggy
import pytest

import coiled
from coiled_core import hookspecs
from coiled_core.errors import (
    BackendLoadError,
    BackendNotFoundError,
    DuplicateBackendError,
    ProvisionError,
)
from coiled_core.plugins import Backend, discover_backends, list_backends, load_backend
from coiled_core.records import ClusterRecord, ClusterState, TLSPolicy
from coiled_core.spec import resolve_cluster_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
SDK_PACKAGES = ("boto3", "botocore", "google", "kubernetes")

#: Every hook of the contract, from the spec class itself.
ALL_HOOKS = sorted(
    name for name, fn in inspect.getmembers(hookspecs.BackendSpec, inspect.isfunction) if hasattr(fn, "coiled_core_spec")
)

# A backend implementing every hook, recording each call (hook name and keyword arguments).
BACKEND_SOURCE = '''
from pydantic import BaseModel

from coiled_core import hookimpl
from coiled_core.errors import ProvisionError
from coiled_core.records import ClusterRecord, ClusterState, TLSPolicy, WorkerRecord

HOOK_API_VERSION = 2
BACKEND_NAME = {backend_name!r}
DESCRIBE_FINDS = {describe_finds!r}
PROVISION_FAILS = {provision_fails!r}
CLAIM_WINS = True
GC_LINES = ["deleted leftovers of " + BACKEND_NAME]
{extra}
CALLS = []


class Options(BaseModel):
    flavour: str = "plain"


def _record(name, state=ClusterState.running, workers=2):
    return ClusterRecord(
        name=name,
        backend=BACKEND_NAME,
        state=state,
        scheduler_address="tcp://127.0.0.1:1",
        dashboard_url="http://127.0.0.1:2/status",
        workers=[WorkerRecord(name=f"{{name}}-worker-{{i}}") for i in range(workers)],
        backend_ids={{"module": __name__}},
        spec={{"name": name}},
    )


@hookimpl
def backend_options_model():
    CALLS.append(("backend_options_model", {{}}))
    return Options


@hookimpl
def keyword_options():
    CALLS.append(("keyword_options", {{}}))
    return {{"region": "flavour"}}


@hookimpl
def tls_policy(options):
    CALLS.append(("tls_policy", {{"options": options}}))
    return TLSPolicy(default=False)


@hookimpl
def preflight(spec, options):
    CALLS.append(("preflight", {{"spec": spec, "options": options}}))


@hookimpl
def provision(spec, options, tls):
    CALLS.append(("provision", {{"spec": spec, "options": options, "tls": tls}}))
    if PROVISION_FAILS:
        raise ProvisionError("fake")
    return _record(spec.name, ClusterState.starting)


@hookimpl
def claim_name(name, options):
    CALLS.append(("claim_name", {{"name": name, "options": options}}))
    return CLAIM_WINS


@hookimpl
def gc(options):
    CALLS.append(("gc", {{"options": options}}))
    return list(GC_LINES)


@hookimpl
def scale(record, options, n_workers, retired, tls):
    CALLS.append(("scale", {{"record": record, "options": options, "n_workers": n_workers, "retired": retired, "tls": tls}}))
    return _record(record.name, workers=n_workers)


@hookimpl
def describe(name, options):
    CALLS.append(("describe", {{"name": name, "options": options}}))
    return _record(name) if DESCRIBE_FINDS else None


@hookimpl
def teardown(record, options):
    CALLS.append(("teardown", {{"record": record, "options": options}}))
    return record.model_copy(update={{"state": ClusterState.stopped}})


@hookimpl
def dashboard_url(record, options):
    CALLS.append(("dashboard_url", {{"record": record, "options": options}}))
    return record.dashboard_url


@hookimpl
def list_clusters(options):
    CALLS.append(("list_clusters", {{"options": options}}))
    return [_record("listed")]


@hookimpl
def logs(record, options, tail):
    CALLS.append(("logs", {{"record": record, "options": options, "tail": tail}}))
    return {{"scheduler": "log of " + BACKEND_NAME + " tail=" + str(tail)}}


@hookimpl
def build_environment(software, options):
    CALLS.append(("build_environment", {{"software": software, "options": options}}))
    return "built " + software.name + " on " + BACKEND_NAME


@hookimpl
def cluster_started(record, options):
    CALLS.append(("cluster_started", {{"record": record, "options": options}}))
'''

# An extension wrapping every hook: it records the hook name before and after the call.
EXTENSION_SOURCE = '''
from coiled_core import hookimpl

CALLS = []
'''


def _extension_source() -> str:
    # Spell every wrapper out with the spec's own argument names (pluggy matches by name).
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs.BackendSpec)
    lines = [EXTENSION_SOURCE]
    for hook in ALL_HOOKS:
        args = ", ".join(getattr(pm.hook, hook).spec.argnames)
        lines.append(
            textwrap.dedent(
                f"""
                @hookimpl(wrapper=True)
                def {hook}({args}):
                    CALLS.append(({hook!r}, "before"))
                    result = yield
                    CALLS.append(({hook!r}, "after"))
                    return result
                """
            )
        )
    return "\n".join(lines)


class FakeSite:
    """A directory of fake distributions and plugin modules, on ``sys.path``."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = root
        self.suffix = uuid.uuid4().hex[:10]
        self.modules: list[str] = []
        monkeypatch.syspath_prepend(str(root))

    @property
    def path(self) -> list[str]:
        return [str(self.root)]

    def module_name(self, stem: str) -> str:
        return f"{stem}_{self.suffix}"

    def write_module(self, stem: str, source: str) -> str:
        name = self.module_name(stem)
        (self.root / f"{name}.py").write_text(source)
        self.modules.append(name)
        return name

    def write_backend_module(self, backend_name: str, *, describe_finds=True, provision_fails=False, extra="") -> str:
        source = BACKEND_SOURCE.format(
            backend_name=backend_name, describe_finds=describe_finds, provision_fails=provision_fails, extra=extra
        )
        return self.write_module(f"fake_backend_{backend_name}", source)

    def write_dist(self, dist_name: str, *, backends=None, extensions=None, version="1.0") -> None:
        info = self.root / f"{dist_name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
        text = ""
        for group, entries in (("coiled_core.backends", backends), ("coiled_core.extensions", extensions)):
            if entries:
                text += f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n"
        (info / "entry_points.txt").write_text(text)

    def add_backend(self, backend_name: str, dist_name: str | None = None, **kwargs) -> str:
        module = self.write_backend_module(backend_name, **kwargs)
        self.write_dist(dist_name or f"{backend_name.replace('_', '-')}-dist", backends={backend_name: module})
        return module

    def module(self, stem: str):
        return importlib.import_module(self.module_name(stem))

    def calls(self, backend_name: str) -> list[tuple[str, dict]]:
        return self.module(f"fake_backend_{backend_name}").CALLS


@pytest.fixture
def site(tmp_path, monkeypatch):
    fake = FakeSite(tmp_path, monkeypatch)
    yield fake
    for name in fake.modules:
        sys.modules.pop(name, None)


def _record(name: str = "c") -> ClusterRecord:
    return ClusterRecord(name=name, backend="fake_a", state=ClusterState.running, scheduler_address="tcp://127.0.0.1:1")


def _call_every_method(backend: Backend) -> None:
    """Call every Backend method once, checking that each answer came from the fake."""
    options_model = backend.options_model()
    assert options_model.__name__ == "Options"
    options = backend.validate_options({"flavour": "spicy"})
    assert options.flavour == "spicy"
    record = _record("c")
    assert backend.options_from_record(record.model_copy(update={"spec": {"backend_options": {"flavour": "x"}}})).flavour == "x"
    spec = resolve_cluster_spec({"name": "c", "backend": backend.name, "n_workers": 2, "worker_memory": "1 GiB"})
    assert backend.keyword_options() == {"region": "flavour"}
    assert backend.tls_policy(options) == TLSPolicy(default=False)
    assert backend.preflight(spec, options) is None
    assert backend.claim_name("c", options) is True
    assert backend.provision(spec.model_copy(update={"security": False}), options).state == ClusterState.starting
    assert backend.scale(record, options, 3, ["c-worker-0"]).worker_names == ["c-worker-0", "c-worker-1", "c-worker-2"]
    assert backend.describe("c", options).state == ClusterState.running
    assert backend.teardown(record, options).state == ClusterState.stopped
    assert backend.cluster_started(record, options) is None
    assert backend.dashboard_url(record.model_copy(update={"dashboard_url": "http://x/status"}), options) == "http://x/status"
    assert [r.name for r in backend.list_clusters(options)] == ["listed"]
    assert backend.logs(record, options, tail=5) == {"scheduler": f"log of {backend.name} tail=5"}
    assert backend.gc(options) == [f"deleted leftovers of {backend.name}"]
    from coiled_core.software import SoftwareEnvironment

    software = SoftwareEnvironment(name="team/x", kind="pip", pip=["distributed"])
    assert backend.build_environment(software, options) == f"built team/x on {backend.name}"


#: Hooks called by _call_every_method, in order (validate_options and options_from_record go
#: through backend_options_model).
EVERY_METHOD_HOOKS = [
    "backend_options_model",
    "backend_options_model",
    "backend_options_model",
    "keyword_options",
    "tls_policy",
    "preflight",
    "claim_name",
    "provision",
    "scale",
    "describe",
    "teardown",
    "cluster_started",
    "dashboard_url",
    "list_clusters",
    "logs",
    "gc",
    "build_environment",
]


def test_fake_backend_implements_every_hook(site):
    site.add_backend("fake_a")
    module = site.module("fake_backend_fake_a")
    implemented = sorted(n for n, fn in vars(module).items() if callable(fn) and hasattr(fn, "coiled_core_impl"))
    assert implemented == ALL_HOOKS
    assert sorted(set(EVERY_METHOD_HOOKS)) == ALL_HOOKS


def test_discovery_finds_fake_distributions_without_importing(site):
    mod_a = site.add_backend("fake_a")
    mod_b = site.add_backend("fake_b")
    found = discover_backends(site.path)
    assert sorted(found) == ["fake_a", "fake_b"]
    assert found["fake_a"].module == mod_a
    assert found["fake_a"].distribution == "fake-a-dist"
    assert found["fake_a"].version == "1.0"
    assert found["fake_b"].module == mod_b
    assert mod_a not in sys.modules and mod_b not in sys.modules
    # With the default path (sys.path, which has tmp_path first) the real backend is there too.
    assert {"fake_a", "fake_b", "local"} <= set(discover_backends())


def test_list_backends_imports_and_reports_working_ones(site):
    site.add_backend("fake_a")
    site.add_backend("fake_b")
    entries = list_backends(site.path)
    assert [(e.name, e.error) for e in entries] == [("fake_a", None), ("fake_b", None)]
    assert all(e.module in sys.modules for e in entries)


def test_only_the_selected_backend_is_called(site):
    site.add_backend("fake_a")
    site.add_backend("fake_b")
    # Both modules are imported, so a leak between them would be seen.
    list_backends(site.path)
    calls_a, calls_b = site.calls("fake_a"), site.calls("fake_b")

    backend = load_backend("fake_a", path=site.path)
    # Loaded (not called) before fake_a is used: a plugin manager shared between loads would
    # now send fake_a's calls to fake_b.
    backend_b = load_backend("fake_b", path=site.path)
    assert backend.name == "fake_a"
    assert backend.plugin_manager.get_plugins() == {site.module("fake_backend_fake_a")}
    assert backend_b.plugin_manager.get_plugins() == {site.module("fake_backend_fake_b")}
    with warnings.catch_warnings():
        # pluggy warns when a call lacks an argument the hookspec declares.
        warnings.simplefilter("error")
        _call_every_method(backend)
    assert [hook for hook, _ in calls_a] == EVERY_METHOD_HOOKS
    assert calls_b == []
    # Arguments reach the hook as the Backend method was given them.
    kwargs = dict(calls_a)
    assert kwargs["scale"]["n_workers"] == 3 and kwargs["scale"]["retired"] == ["c-worker-0"]
    assert kwargs["logs"]["tail"] == 5
    assert kwargs["describe"]["name"] == "c"
    assert kwargs["claim_name"]["name"] == "c" and kwargs["claim_name"]["options"].flavour == "spicy"
    assert kwargs["gc"]["options"].flavour == "spicy"

    # And the other way round: fake_b's backend never reaches fake_a.
    before = len(calls_a)
    _call_every_method(backend_b)
    assert [hook for hook, _ in calls_b] == EVERY_METHOD_HOOKS
    assert len(calls_a) == before


def test_cluster_calls_only_its_backend(site):
    site.add_backend("fake_a", describe_finds=False, provision_fails=True)
    site.add_backend("fake_b")
    list_backends(site.path)  # import fake_b too, so that calls into it would be recorded
    calls_a, calls_b = site.calls("fake_a"), site.calls("fake_b")

    with pytest.raises(ProvisionError, match="fake") as info:
        coiled.Cluster(name="plugin-isolation", backend="fake_a", n_workers=1, worker_memory="1 GiB", timeout=60)
    # The failed Cluster is only reachable through the traceback; collect it here, so that the
    # "unclosed cluster" ResourceWarning distributed's Cluster.__del__ gives for a cluster left in
    # the "failed" state is not raised inside some later test.
    del info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()

    # The creation flow: describe (no live cluster), claim the name (won), provision (failed).
    hooks = [hook for hook, _ in calls_a]
    assert "describe" in hooks and "claim_name" in hooks and "provision" in hooks
    assert hooks.index("describe") < hooks.index("claim_name") < hooks.index("provision")
    assert hooks.count("provision") == 1
    assert set(hooks[: hooks.index("provision")]) <= {
        "backend_options_model", "keyword_options", "tls_policy", "preflight", "describe", "claim_name"
    }, hooks
    # The check step comes before any claim or resource.
    assert hooks.index("preflight") < hooks.index("describe")
    kwargs = dict(calls_a)
    assert kwargs["describe"]["name"] == kwargs["claim_name"]["name"] == "plugin-isolation"
    assert kwargs["provision"]["spec"].name == "plugin-isolation"
    # provision failed: the core may then read the log tail and tear down a minimal record to
    # release the claim (either is optional), only for this cluster, on this backend.
    after = hooks[hooks.index("provision") + 1 :]
    assert set(after) <= {"logs", "teardown"}, hooks
    for hook, call in calls_a:
        if hook in ("logs", "teardown"):
            assert call["record"].name == "plugin-isolation" and call["record"].backend == "fake_a"
    assert calls_b == []


def test_backend_has_a_method_per_hook():
    # backend_options_model is reached through options_model / validate_options / options_from_record.
    for hook in ALL_HOOKS:
        method = "options_model" if hook == "backend_options_model" else hook
        assert callable(getattr(Backend, method, None)), f"Backend has no method for the {hook!r} hook"
    assert list(inspect.signature(Backend.claim_name).parameters) == ["self", "name", "options"]
    assert list(inspect.signature(Backend.gc).parameters) == ["self", "options"]


def test_lost_name_claim_and_empty_gc_are_answers(site):
    # False and [] are the backend's answers, not a missing hook.
    site.add_backend("fake_a", extra="CLAIM_WINS = False\nGC_LINES = []")
    backend = load_backend("fake_a", path=site.path)
    options = backend.validate_options({})
    assert backend.claim_name("taken", options) is False
    assert backend.gc(options) == []
    assert [hook for hook, _ in site.calls("fake_a")][-2:] == ["claim_name", "gc"]


def test_wrapper_extension_sees_every_call(site):
    site.add_backend("fake_a")
    ext = site.write_module("fake_extension", _extension_source())
    site.write_dist("fake-tracing", extensions={"tracing": ext})

    backend = load_backend("fake_a", path=site.path)
    assert site.module("fake_extension") in backend.plugin_manager.get_plugins()
    _call_every_method(backend)

    seen = site.module("fake_extension").CALLS
    expected = [(hook, when) for hook in EVERY_METHOD_HOOKS for when in ("before", "after")]
    assert seen == expected
    assert [hook for hook, _ in site.calls("fake_a")] == EVERY_METHOD_HOOKS


def test_extension_that_fails_to_import_is_skipped_with_a_warning(site):
    site.add_backend("fake_a")
    ext = site.write_module("fake_bad_extension", "raise ImportError('no tracing sdk')\n")
    site.write_dist("fake-bad-ext", extensions={"badext": ext})
    with pytest.warns(UserWarning, match=r"'badext'.*fake-bad-ext.*no tracing sdk"):
        backend = load_backend("fake_a", path=site.path)
    assert backend.plugin_manager.get_plugins() == {site.module("fake_backend_fake_a")}


def test_broken_backend_is_named_and_skipped_when_listing(site):
    site.add_backend("fake_a")
    broken = site.write_module(
        "fake_broken", "raise ImportError(\"No module named 'fakecloud_sdk'\", name='fakecloud_sdk')\n"
    )
    site.write_dist("fake-broken-dist", backends={"fake_broken": broken})
    site.add_backend("fake_b")

    entries = {e.name: e for e in list_backends(site.path)}
    assert sorted(entries) == ["fake_a", "fake_b", "fake_broken"]
    assert entries["fake_a"].error is None and entries["fake_b"].error is None
    error = entries["fake_broken"].error
    assert error is not None
    assert "fake_broken" in error and "fake-broken-dist" in error and "fakecloud_sdk" in error

    with pytest.raises(BackendLoadError, match="fake_broken") as info:
        load_backend("fake_broken", path=site.path)
    assert "fake-broken-dist" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)
    # The working backends still load.
    assert load_backend("fake_a", path=site.path).name == "fake_a"


def test_two_distributions_claiming_one_name(site):
    one = site.write_backend_module("fake_dup")
    site.write_dist("dist-one", backends={"fake_dup": one})
    two = site.write_module("fake_dup_two", BACKEND_SOURCE.format(backend_name="fake_dup", describe_finds=True, provision_fails=False, extra=""))
    site.write_dist("dist-two", backends={"fake_dup": two})

    for call in (discover_backends, list_backends, lambda path: load_backend("fake_dup", path=path)):
        with pytest.raises(DuplicateBackendError) as info:
            call(site.path)
        message = str(info.value)
        assert "dist-one" in message and "dist-two" in message and "fake_dup" in message


def test_same_distribution_twice_on_the_path_is_not_a_duplicate(tmp_path, monkeypatch):
    sites = []
    for sub in ("first", "second"):
        (tmp_path / sub).mkdir()
        sites.append(FakeSite(tmp_path / sub, monkeypatch))
    sites[1].suffix = sites[0].suffix  # the same module name in both
    for fake in sites:
        fake.add_backend("fake_a", dist_name="fake-a-dist")
    try:
        found = discover_backends([str(tmp_path / "first"), str(tmp_path / "second")])
        assert list(found) == ["fake_a"]
    finally:
        for fake in sites:
            for name in fake.modules:
                sys.modules.pop(name, None)


def test_unknown_backend_lists_the_installed_ones(site):
    site.add_backend("fake_a")
    site.add_backend("fake_b")
    with pytest.raises(BackendNotFoundError) as info:
        load_backend("nope", path=site.path)
    message = str(info.value)
    assert "'nope'" in message and "'fake_a'" in message and "'fake_b'" in message
    assert "'local'" not in message


def test_unknown_backend_with_an_empty_path(tmp_path):
    with pytest.raises(BackendNotFoundError, match="installed backends: none"):
        load_backend("nope", path=[str(tmp_path)])


def test_cluster_with_unknown_backend_lists_local():
    with pytest.raises(BackendNotFoundError) as info:
        coiled.Cluster(backend="nope")
    message = str(info.value)
    assert "'nope'" in message and "'local'" in message


def test_hook_api_version_mismatch_is_refused(site):
    site.add_backend("fake_a", extra="HOOK_API_VERSION = 1")
    with pytest.raises(BackendLoadError) as info:
        load_backend("fake_a", path=site.path)
    message = str(info.value)
    assert "version 1" in message and "needs version 2" in message and "fake_a" in message
    # Listing names it too, rather than failing.
    (entry,) = list_backends(site.path)
    assert entry.error is not None and "version 1" in entry.error


def test_a_backend_declaring_no_version_is_told_which_it_needs(site):
    site.add_backend("fake_a", extra="del HOOK_API_VERSION")
    with pytest.raises(BackendLoadError, match=r"declares no HOOK_API_VERSION.*version 2.*HOOK_API_VERSION = 2"):
        load_backend("fake_a", path=site.path)


def test_a_backend_missing_required_hooks_is_refused_when_it_loads(site):
    site.add_backend("fake_a", extra="")
    module = site.module_name("fake_backend_fake_a")
    source = (site.root / f"{module}.py").read_text()
    for hook in ("teardown", "gc"):
        source = source.replace(f"@hookimpl\ndef {hook}(", f"def {hook}(")
    (site.root / f"{module}.py").write_text(source)
    with pytest.raises(BackendLoadError, match=r"does not implement the required hook\(s\) teardown, gc"):
        load_backend("fake_a", path=site.path)


def test_optional_hooks_have_defaults(site):
    site.add_backend("fake_a", extra="")
    module = site.module_name("fake_backend_fake_a")
    source = (site.root / f"{module}.py").read_text()
    for hook in ("keyword_options", "tls_policy", "preflight", "dashboard_url"):
        source = source.replace(f"@hookimpl\ndef {hook}(", f"def {hook}(")
    (site.root / f"{module}.py").write_text(source)
    backend = load_backend("fake_a", path=site.path)
    options = backend.validate_options({})
    assert backend.tls_policy(options) == TLSPolicy(default=True, required=False)
    assert backend.keyword_options() == {}
    record = _record().model_copy(update={"dashboard_url": "http://x/status"})
    assert backend.dashboard_url(record, options) == "http://x/status"


def test_entry_points_may_name_an_object(site):
    """The standard ``package.module:object`` form: hooks on a class instance, say."""
    module = site.write_backend_module("fake_obj")
    site.write_module("fake_holder", f"import {module} as backend\n")
    site.write_dist("fake-obj-dist", backends={"fake_obj": f"{site.module_name('fake_holder')}:backend"})
    backend = load_backend("fake_obj", path=site.path)
    assert backend.options_model().__name__ == "Options"


def test_a_scheduler_address_against_the_requested_security_fails_at_once(site):
    site.add_backend("fake_a", describe_finds=False, extra="")
    with pytest.raises(ProvisionError, match=r"fake_a.*broke the hook contract.*security=True.*'tls://'") as info:
        coiled.Cluster(name="plugin-tls", backend="fake_a", n_workers=1, worker_memory="1 GiB", security=True, timeout=60)
    del info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    hooks = [hook for hook, _ in site.calls("fake_a")]
    assert hooks[-1] == "teardown"  # what it made is torn down


def test_a_live_record_without_its_spec_breaks_the_contract(site):
    site.add_backend("fake_a", extra="")
    backend = load_backend("fake_a", path=site.path)
    module = site.module("fake_backend_fake_a")
    original = module._record
    module._record = lambda *a, **k: original(*a, **k).model_copy(update={"spec": {}})
    with pytest.raises(ProvisionError, match="without its spec"):
        backend.describe("c", backend.validate_options({}))


def test_matching_hook_api_version_is_accepted(site):
    site.add_backend("fake_a", extra=f"HOOK_API_VERSION = {hookspecs.HOOK_API_VERSION}")
    assert load_backend("fake_a", path=site.path).options_model().__name__ == "Options"


def test_misspelled_hook_is_refused(site):
    extra = textwrap.dedent(
        """
        from coiled_core import hookimpl as _hookimpl

        @_hookimpl
        def provison(spec, options, tls):
            return None
        """
    )
    site.add_backend("fake_a", extra=extra)
    with pytest.raises(BackendLoadError, match="provison") as info:
        load_backend("fake_a", path=site.path)
    assert "fake_a" in str(info.value)
    assert isinstance(info.value.__cause__, pluggy.PluginValidationError)


def test_hook_with_wrong_argument_names_is_refused(site):
    extra = textwrap.dedent(
        """
        from coiled_core import hookimpl as _hookimpl

        @_hookimpl
        def dashboard_url(cluster_record):
            return None
        """
    )
    module = site.add_backend("fake_badargs", dist_name="fake-badargs-dist")
    with open(site.root / f"{module}.py", "a") as f:
        f.write(extra)  # after the fake's own dashboard_url, so it replaces it
    with pytest.raises(BackendLoadError, match="fake_badargs") as info:
        load_backend("fake_badargs", path=site.path)
    assert "cluster_record" in str(info.value)


def test_each_load_gets_a_fresh_plugin_manager(site):
    site.add_backend("fake_a")
    first = load_backend("fake_a", path=site.path)
    second = load_backend("fake_a", path=site.path)
    assert first is not second
    assert first.plugin_manager is not second.plugin_manager
    # Both hold the same (single) backend module.
    assert first.plugin_manager.get_plugins() == second.plugin_manager.get_plugins() == {site.module("fake_backend_fake_a")}
    # Unregistering from one leaves the other intact.
    first.plugin_manager.unregister(name="backend:fake_a")
    assert second.options_model().__name__ == "Options"
    with pytest.raises(BackendLoadError, match="returned nothing"):
        first.options_model()


def _sdk_stubs(tmp_path: Path) -> Path:
    """Empty stand-ins for the cloud SDKs that are not installed, so an import of one shows."""
    stubs = tmp_path / "sdk_stubs"
    stubs.mkdir()
    for name in SDK_PACKAGES:
        if importlib.util.find_spec(name) is None:
            (stubs / name).mkdir()
            (stubs / name / "__init__.py").write_text("")
    return stubs


def _imported_sdks(code: str, tmp_path: Path) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_sdk_stubs(tmp_path)), env.get("PYTHONPATH")]))
    script = code + "; print(sorted(m for m in sys.modules if m.split('.')[0] in " + repr(SDK_PACKAGES) + "))"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_sdk_stubs_would_be_noticed(tmp_path):
    # The check below can fail: importing an SDK shows up in its output.
    # (With the aws plugin installed, the real boto3 may come along with botocore.)
    noticed = _imported_sdks("import sys, boto3, kubernetes", tmp_path)
    assert "'boto3'" in noticed and "'kubernetes'" in noticed


def test_listing_backends_does_not_import_cloud_sdks(tmp_path):
    code = "import sys, coiled; from coiled_core.plugins import list_backends; list_backends()"
    assert _imported_sdks(code, tmp_path) == "[]"


def test_importing_coiled_does_not_import_cloud_sdks(tmp_path):
    assert _imported_sdks("import sys, coiled", tmp_path) == "[]"


def test_generic_keywords_reach_the_options_the_backend_maps_them_to(site):
    site.add_backend("fake_a", describe_finds=False, provision_fails=True)
    with pytest.raises(ProvisionError):
        coiled.Cluster(name="kw", backend="fake_a", region="sweet", n_workers=1, worker_memory="1 GiB", timeout=60)
    provision = dict(site.calls("fake_a"))["provision"]
    assert provision["options"].flavour == "sweet"
    assert provision["spec"].backend_options["flavour"] == "sweet"
    with pytest.raises(coiled.ClusterSpecError, match=r"region='sweet' and backend_options \{'flavour': 'sour'\} disagree"):
        coiled.Cluster(name="kw", backend="fake_a", region="sweet", backend_options={"flavour": "sour"})
    with pytest.warns(UserWarning, match=r"worker_vm_types, spot_policy: no meaning on the 'fake_a' backend"):
        with pytest.raises(ProvisionError):
            coiled.Cluster(name="kw", backend="fake_a", worker_vm_types=["x"], spot_policy="spot", n_workers=1,
                           worker_memory="1 GiB", timeout=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def test_a_bad_mapped_value_names_the_keyword_the_user_wrote(site):
    extra = """
from pydantic import field_validator as _fv

class Options(BaseModel):
    flavour: str = "plain"

    @_fv("flavour")
    @classmethod
    def _known(cls, v):
        if v not in ("plain", "sweet"):
            raise ValueError(f"{v!r} is not a flavour of this backend")
        return v
"""
    module = site.add_backend("fake_a", describe_finds=False)
    with open(site.root / f"{module}.py", "a") as f:
        f.write(extra)
    with pytest.raises(coiled.ClusterSpecError, match=r"^region: 'salty' is not a flavour of this backend$"):
        coiled.Cluster(name="kw", backend="fake_a", region="salty")


def test_a_keyword_and_an_option_agree_once_validated_and_aliases_count(site):
    extra = """
from pydantic import Field as _Field, field_validator as _fv, ConfigDict as _CD

class Options(BaseModel):
    model_config = _CD(populate_by_name=True)
    flavour: str = _Field("plain", alias="flavour_name")

    @_fv("flavour")
    @classmethod
    def _normal(cls, v):
        return "plain" if v in ("plain", "ordinary") else v

@hookimpl
def keyword_options():
    return {"region": "flavour"}
"""
    module = site.add_backend("fake_a", describe_finds=False, provision_fails=True)
    with open(site.root / f"{module}.py", "a") as f:
        f.write(extra)
    # "ordinary" and "plain" mean the same to the backend: no disagreement.
    spec, options = coiled.check_cluster(backend="fake_a", region="ordinary", backend_options={"flavour": "plain"})
    assert options.flavour == "plain"
    # The option under its alias is the same option.
    with pytest.raises(coiled.ClusterSpecError, match=r"region='sweet' and backend_options \{'flavour_name': 'sour'\} disagree"):
        coiled.check_cluster(backend="fake_a", region="sweet", backend_options={"flavour_name": "sour"})
