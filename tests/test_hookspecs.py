"""The hook contract: documented, firstresult, and matching the local backend's implementations."""

from __future__ import annotations

import inspect

import pluggy
import pytest

from coiled_core import hookspecs
from coiled_core.hookspecs import BackendSpec

HOOKS = sorted(name for name, fn in inspect.getmembers(BackendSpec, inspect.isfunction) if hasattr(fn, "coiled_core_spec"))


@pytest.fixture
def pm() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("coiled_core")
    pm.add_hookspecs(BackendSpec)
    return pm


@pytest.fixture
def local_plugin():
    return pytest.importorskip("coiled_local.plugin")


def test_the_contract_has_the_expected_hooks():
    assert HOOKS == sorted(
        [
            "backend_options_model",
            "keyword_options",
            "tls_policy",
            "preflight",
            "claim_name",
            "provision",
            "scale",
            "describe",
            "teardown",
            "dashboard_url",
            "cluster_started",
            "list_clusters",
            "gc",
            "logs",
            "build_environment",
        ]
    )
    assert set(hookspecs.REQUIRED_HOOKS) == set(HOOKS) - {"keyword_options", "tls_policy", "preflight", "cluster_started", "dashboard_url", "build_environment"}
    assert hookspecs.HOOK_API_VERSION == 2
    # Every public function of the spec class is a hook spec.
    public = sorted(n for n, _ in inspect.getmembers(BackendSpec, inspect.isfunction) if not n.startswith("_"))
    assert public == HOOKS


def test_project_name_matches_the_markers():
    from coiled_core import hookimpl

    assert hookspecs.PROJECT_NAME == "coiled_core"
    assert hookspecs.hookspec.project_name == hookimpl.project_name == "coiled_core"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    doc = inspect.getdoc(getattr(BackendSpec, hook))
    assert doc, f"{hook} has no docstring"
    lines = doc.splitlines()
    summary = lines[0].strip()
    # A one-line summary: a sentence on the first line, followed by a blank line (or nothing).
    assert summary and summary.endswith("."), f"{hook}: summary {summary!r} is not a one-line sentence"
    assert len(lines) == 1 or lines[1].strip() == "", f"{hook}: summary runs over more than one line"
    body = "\n".join(lines[1:])
    assert "Called" in body, f"{hook}: docstring does not say when the hook is called"
    stripped = [line.strip() for line in lines]
    for section in ("Parameters:", "Returns:", "Raises:", "Example::"):
        assert section in stripped, f"{hook}: docstring has no {section!r} section"
        # Each section has content.
        after = lines[stripped.index(section) + 1 :]
        assert after and (after[0].strip() or (len(after) > 1 and after[1].strip())), f"{hook}: empty {section!r} section"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_firstresult(pm, hook):
    assert getattr(pm.hook, hook).spec.opts["firstresult"] is True


@pytest.mark.parametrize("hook", HOOKS)
def test_local_plugin_uses_the_spec_argument_names(pm, local_plugin, hook):
    impl = getattr(local_plugin, hook, None)
    if impl is None:
        assert hook not in hookspecs.REQUIRED_HOOKS
        return
    assert hasattr(impl, "coiled_core_impl"), f"local plugin's {hook} is not marked with hookimpl"
    impl_args = list(inspect.signature(impl).parameters)
    spec_args = list(getattr(pm.hook, hook).spec.argnames)
    assert impl_args == spec_args


def test_local_plugin_implements_every_required_hook_and_registers_cleanly(pm, local_plugin):
    implemented = sorted(n for n, fn in vars(local_plugin).items() if callable(fn) and hasattr(fn, "coiled_core_impl"))
    assert set(hookspecs.REQUIRED_HOOKS) <= set(implemented) <= set(HOOKS)
    assert local_plugin.HOOK_API_VERSION == hookspecs.HOOK_API_VERSION
    pm.register(local_plugin, name="backend:local")
    pm.check_pending()
    assert sorted(impl.function.__name__ for hook in HOOKS for impl in getattr(pm.hook, hook).get_hookimpls()) == implemented


def test_pluggy_refuses_an_implementation_with_an_unknown_argument(pm):
    # What the argument-name check above relies on: pluggy validates names at registration.
    from coiled_core import hookimpl

    class Bad:
        @hookimpl
        def describe(self, name, options, extra):
            return None

    with pytest.raises(pluggy.PluginValidationError, match="extra"):
        pm.register(Bad())
