"""The start progress display: log lines when not interactive, a rich live display when it is."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading
import types

import pytest
from rich.console import Console

from coiled_core import progress as progress_module
from coiled_core.errors import ProvisionError
from coiled_core.progress import StartProgress, is_interactive

DASHBOARD = "http://127.0.0.1:8787/status"
LABEL = "Cluster prod (local)"


def coiled_messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "coiled" and r.levelno >= level]


# ------------------------------------------------------------------------ non-interactive


def test_log_lines_once_per_change(caplog, capsys):
    caplog.set_level(logging.INFO, logger="coiled")
    progress = StartProgress("prod", "local", 5, interactive=False)
    with progress:
        progress.phase("Claiming name")
        progress.phase("Claiming name")
        progress.phase("Provisioning")
        progress.workers(0)  # unchanged from the initial 0: no line
        for _ in range(3):
            progress.workers(1)
        progress.workers(2)
        progress.workers(2)
        progress.dashboard(DASHBOARD)
        progress.dashboard(DASHBOARD)
        progress.phase("Waiting for workers")
        progress.workers(5)
        progress.workers(5)

    messages = coiled_messages(caplog)
    assert messages[:-1] == [
        f"{LABEL}: Claiming name",
        f"{LABEL}: Provisioning",
        f"{LABEL}: 1/5 workers ready",
        f"{LABEL}: 2/5 workers ready",
        f"{LABEL}: dashboard at {DASHBOARD}",
        f"{LABEL}: Waiting for workers",
        f"{LABEL}: 5/5 workers ready",
    ]
    assert messages[-1].startswith(f"{LABEL}: running (5/5 workers, ")
    assert all("\x1b" not in m for m in messages)
    assert progress.outcome == "running"
    assert not progress.live
    assert capsys.readouterr() == ("", "")


def test_log_failure_outcome_and_exception_propagates(caplog):
    caplog.set_level(logging.INFO, logger="coiled")
    progress = StartProgress("prod", "local", 5, interactive=False)
    with pytest.raises(ProvisionError, match="no capacity"):
        with progress:
            progress.phase("Waiting for workers")
            progress.workers(2)
            raise ProvisionError("no capacity")
    last = coiled_messages(caplog)[-1]
    assert last.startswith(f"{LABEL}: failed: ProvisionError: no capacity (after ")
    assert last.endswith("while waiting for workers)")
    assert progress.outcome == "failed: ProvisionError: no capacity"


def test_attached_and_explicit_start_stop(caplog):
    caplog.set_level(logging.INFO, logger="coiled")
    progress = StartProgress("prod", "local", 2, interactive=False)
    progress.start()
    progress.attached()
    progress.attached()
    progress.workers(2)
    progress.stop(success=True)
    progress.stop(success=False, error="ignored")  # only the first stop counts
    progress.phase("Too late")  # updates after stop are ignored
    progress.workers(1)
    messages = coiled_messages(caplog)
    assert messages[:2] == [
        f"{LABEL}: attached to the existing cluster",
        f"{LABEL}: 2/2 workers ready",
    ]
    assert messages[2].startswith(f"{LABEL}: running (2/2 workers, ")
    assert len(messages) == 3
    assert progress.outcome == "running"


def test_concurrent_updates_log_each_change_once(caplog):
    caplog.set_level(logging.INFO, logger="coiled")
    progress = StartProgress("prod", "local", 20, interactive=False)
    barrier = threading.Barrier(8)

    def poll() -> None:
        barrier.wait()
        for n in range(21):
            progress.workers(n)
            progress.workers(n)

    with progress:
        threads = [threading.Thread(target=poll) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lines = [m for m in coiled_messages(caplog) if "workers ready" in m]
    assert all(a != b for a, b in zip(lines, lines[1:]))
    assert progress.ready_workers in range(21)


# ------------------------------------------------------------------------------- show=False


def test_show_false_emits_nothing(caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="coiled")
    for interactive in (False, True, None):
        progress = StartProgress("prod", "local", 5, show=False, interactive=interactive)
        with pytest.raises(RuntimeError):
            with progress:
                progress.phase("Provisioning")
                progress.workers(3)
                progress.dashboard(DASHBOARD)
                progress.attached()
                assert not progress.live
                raise RuntimeError("boom")
        assert progress.outcome == "failed: RuntimeError: boom"
    assert coiled_messages(caplog, logging.INFO) == []
    assert capsys.readouterr() == ("", "")


def test_show_false_writes_nothing_to_a_given_console(caplog):
    caplog.set_level(logging.INFO, logger="coiled")
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    with StartProgress("prod", "local", 5, show=False, interactive=True, console=console) as p:
        p.phase("Provisioning")
        p.workers(2)
    assert buf.getvalue() == ""
    assert coiled_messages(caplog) == []


# ------------------------------------------------------------------------------ interactive


def test_interactive_renders_name_phase_workers_dashboard(caplog):
    caplog.set_level(logging.INFO, logger="coiled")
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system=None, width=100)
    progress = StartProgress("prod", "local", 5, console=console)  # decided from the console
    with progress:
        assert progress.live
        progress.phase("Waiting for workers")
        progress.workers(2)
        progress.dashboard(DASHBOARD)
        progress.refresh()
        during = buf.getvalue()
        assert "prod" in during and "local" in during
        assert "Waiting for workers" in during
        assert "2/5" in during
        assert DASHBOARD in during
        progress.workers(5)
    final = buf.getvalue()[len(during) :]
    assert "5/5" in final
    assert "running" in final
    assert not progress.live
    # The live display replaces the log lines: nothing at INFO.
    assert coiled_messages(caplog) == []


def test_interactive_failure_outcome_and_exception_propagates():
    buf = io.StringIO()  # not a terminal: rich writes the final display only
    console = Console(file=buf, width=120)
    progress = StartProgress("prod", "local", 5, interactive=True, console=console)
    with pytest.raises(ProvisionError, match="scheduler never came up"):
        with progress:
            progress.phase("Waiting for scheduler")
            progress.workers(2)
            progress.dashboard(DASHBOARD)
            raise ProvisionError("scheduler never came up")
    out = buf.getvalue()
    assert "\x1b" not in out
    assert "prod" in out and "2/5" in out and DASHBOARD in out
    assert "failed: ProvisionError: scheduler never came up" in out
    assert "while waiting for scheduler" in out
    assert out.endswith("\n")
    assert out.rstrip().splitlines()[-1].strip().startswith("Status")  # outcome is last


def test_no_workers_requested_renders_count_only():
    buf = io.StringIO()
    console = Console(file=buf, width=100)
    with StartProgress("prod", "local", 0, interactive=True, console=console):
        pass
    assert "0/0" in buf.getvalue()
    assert "running" in buf.getvalue()


# ---------------------------------------------------------------------------- the choice


def test_not_interactive_when_stdout_is_not_a_terminal(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert is_interactive() is False


def test_interactive_when_rich_is_told_the_output_is_a_terminal(monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert is_interactive() is True
    monkeypatch.setenv("TERM", "dumb")
    assert is_interactive() is False


def _fake_ipython(monkeypatch, shell_class_name: str) -> None:
    shell_class = type(shell_class_name, (), {})
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell_class()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)


def test_interactive_in_jupyter(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    _fake_ipython(monkeypatch, "ZMQInteractiveShell")
    monkeypatch.setattr(progress_module, "_has_ipywidgets", lambda: True)
    assert is_interactive() is True
    # Without ipywidgets rich cannot draw live in a notebook: fall back to log lines.
    monkeypatch.setattr(progress_module, "_has_ipywidgets", lambda: False)
    assert is_interactive() is False
    # Terminal IPython is judged by its stdout like any other terminal program.
    _fake_ipython(monkeypatch, "TerminalInteractiveShell")
    monkeypatch.setattr(progress_module, "_has_ipywidgets", lambda: True)
    assert is_interactive() is False


def test_import_does_not_load_rich_or_ipython():
    code = (
        "import sys, coiled_core.progress\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('rich', 'IPython')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_rich_log_handler_on_the_same_console_does_not_deadlock():
    from rich.logging import RichHandler

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system=None, width=100)
    handler = RichHandler(console=console, level=logging.DEBUG)
    coiled_logger = logging.getLogger("coiled")
    old_level = coiled_logger.level
    coiled_logger.addHandler(handler)
    coiled_logger.setLevel(logging.DEBUG)
    try:
        progress = StartProgress("prod", "local", 300, console=console)

        def update() -> None:
            for n in range(300):
                progress.workers(n)
                progress.phase(f"phase {n % 3}")

        def redraw() -> None:
            for _ in range(300):
                progress.refresh()

        with progress:
            threads = [threading.Thread(target=update), threading.Thread(target=redraw)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=10)
            assert not any(t.is_alive() for t in threads), "deadlocked"
    finally:
        coiled_logger.removeHandler(handler)
        coiled_logger.setLevel(old_level)
    assert "299/300" in buf.getvalue()
