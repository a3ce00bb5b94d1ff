"""The progress display shown while a cluster starts.

:class:`StartProgress` is fed by the cluster start code (``phase``, ``dashboard``, ``workers``,
``attached``) and shows what it is told in one of two ways, chosen by :func:`is_interactive`:

- In an interactive terminal or a Jupyter notebook: a live `rich <https://rich.readthedocs.io>`_
  display that redraws a few times per second and stays on screen when the start ends, its last
  line giving the outcome ("running" or "failed: ...").
- Anywhere else (pipes, CI, captured test output): plain lines through the ``"coiled"`` logger at
  INFO, one per phase change, one per change in the number of ready workers (not one per poll),
  one for the dashboard link and one for the outcome. These carry no ANSI codes.

``show=False`` silences both: nothing is printed and nothing is logged at INFO (the same events
are still logged at DEBUG, as they are while the live display is up, for diagnosis).

Importing this module is cheap: ``rich`` is imported only when a live display is actually used.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only, keeps the import cheap
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.live import Live

__all__ = ["StartProgress", "is_interactive"]

logger = logging.getLogger("coiled")

#: How often the live display redraws itself (it also redraws once when the start ends).
REFRESH_PER_SECOND = 4


def _in_jupyter() -> bool:
    """True inside a Jupyter kernel (an IPython ``ZMQInteractiveShell``).

    IPython is consulted only if something has imported it already: a process that has not
    imported IPython is not a notebook kernel, and importing it here would be slow.
    """
    if "IPython" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except Exception:  # a broken or partial IPython install is not a notebook
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _has_ipywidgets() -> bool:
    """Whether ``ipywidgets``, which rich's live display needs in a notebook, is installed."""
    try:
        return importlib.util.find_spec("ipywidgets") is not None
    except (ImportError, ValueError):
        return False


def is_interactive() -> bool:
    """Whether the start display should be a live rich display rather than log lines.

    True in a Jupyter notebook (when ``ipywidgets`` is installed, which rich's live display needs
    there) and when standard output is a terminal that understands escape sequences, by rich's
    own rules (``Console().is_terminal``, honouring ``FORCE_COLOR`` and ``TTY_COMPATIBLE``, and not
    a ``TERM=dumb`` terminal). Decided without importing rich whenever standard output plainly
    is not a terminal.
    """
    if _in_jupyter():
        return _has_ipywidgets()
    stream = sys.stdout
    if stream is None:
        return False
    overridden = any(key in os.environ for key in ("FORCE_COLOR", "TTY_COMPATIBLE"))
    if not overridden:
        try:
            if not stream.isatty():
                return False
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            return False
    from rich.console import Console

    console = Console()
    return console.is_terminal and not console.is_dumb_terminal


def _describe_error(error: BaseException | str | None) -> str:
    """A one-line description of why the start failed."""
    if error is None:
        return "failed"
    if isinstance(error, str):
        return f"failed: {error}" if error else "failed"
    kind = "cancelled" if not isinstance(error, Exception) else "failed"
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    name = type(error).__name__
    return f"{kind}: {name}: {message}" if message else f"{kind}: {name}"


def _lower_first(text: str) -> str:
    """``Waiting for workers`` -> ``waiting for workers``, leaving ``AWS setup`` alone."""
    if len(text) > 1 and text[1].isupper():
        return text
    return text[:1].lower() + text[1:]


def _format_elapsed(seconds: float) -> str:
    """``12.3s`` under a minute, ``2m 05s`` above."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m {secs:02d}s"


class StartProgress:
    """Progress of one cluster start, shown live in a terminal or notebook, else logged.

    Every method is cheap and thread-safe, so the start code may call them from an asyncio event
    loop thread, as often as it polls: repeated calls with an unchanged value do nothing.

    Parameters
    ----------
    cluster_name:
        Name of the cluster being started (or attached to).
    backend:
        Name of the backend starting it.
    requested_workers:
        Number of workers the start waits for (the denominator of "ready/requested").
    show:
        False turns the display off entirely: nothing printed, nothing logged at INFO.
    interactive:
        Force the live display (True) or log lines (False); None decides with
        :func:`is_interactive`, or from ``console`` when one is given.
    console:
        The rich ``Console`` the live display writes to (for tests); a new one on standard output
        when not given.

    Examples
    --------
    >>> progress = StartProgress("prod", "local", 5, show=False)
    >>> with progress:
    ...     progress.phase("Provisioning")
    ...     progress.workers(5)
    >>> progress.outcome
    'running'
    """

    def __init__(
        self,
        cluster_name: str,
        backend: str,
        requested_workers: int,
        show: bool = True,
        *,
        interactive: bool | None = None,
        console: Console | None = None,
    ) -> None:
        self.cluster_name = str(cluster_name)
        self.backend = str(backend)
        self.requested_workers = max(0, int(requested_workers))
        self.show = bool(show)
        self._console = console
        self._interactive = interactive
        self._lock = threading.Lock()  # the state below; taken when drawing
        self._log_lock = threading.Lock()  # orders state changes with their log lines
        self._phase: str | None = None
        self._ready = 0
        self._dashboard: str | None = None
        self._attached = False
        self._outcome: str | None = None
        self._success: bool | None = None
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._live: Live | None = None
        self._live_mode = False
        self._label = f"Cluster {self.cluster_name} ({self.backend})"

    # ----------------------------------------------------------------------------- state

    @property
    def phase_name(self) -> str | None:
        """The current phase, or None before the first one."""
        return self._phase

    @property
    def ready_workers(self) -> int:
        """The number of workers connected so far, as last reported."""
        return self._ready

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard address, once known."""
        return self._dashboard

    @property
    def outcome(self) -> str | None:
        """``"running"``, ``"failed: ..."`` or ``"cancelled: ..."`` once stopped, else None."""
        return self._outcome

    @property
    def elapsed(self) -> float:
        """Seconds since :meth:`start` (until :meth:`stop`), 0.0 before it."""
        if self._started_at is None:
            return 0.0
        end = self._ended_at if self._ended_at is not None else time.monotonic()
        return end - self._started_at

    @property
    def live(self) -> bool:
        """Whether a live rich display is up."""
        return self._live is not None

    # ------------------------------------------------------------------------- lifecycle

    def start(self) -> StartProgress:
        """Start timing and, in interactive mode, the live display. Calling it twice is harmless."""
        with self._lock:
            if self._started_at is not None:
                return self
            self._started_at = time.monotonic()
            if not self.show:
                return self
            interactive = self._interactive
            if interactive is None:
                if self._console is not None:
                    interactive = self._console.is_terminal or self._console.is_jupyter
                else:
                    interactive = is_interactive()
            self._live_mode = bool(interactive)
        if self._live_mode:
            self._start_live()
        return self

    def _start_live(self) -> None:
        """Put up the rich live display; fall back to log lines if that is impossible."""
        try:
            from rich.console import Console
            from rich.live import Live

            own_console = self._console is None
            console = self._console if self._console is not None else Console()
            live = Live(
                self,
                console=console,
                refresh_per_second=REFRESH_PER_SECOND,
                # In a notebook the live display is a widget, which a saved notebook does not
                # keep: it goes when the start ends, and the final state is printed instead.
                transient=console.is_jupyter,
                # Only our own console is standard output: redirecting prints into a console
                # given for testing would swallow them.
                redirect_stdout=own_console,
                redirect_stderr=own_console,
            )
            live.start(refresh=True)
        except Exception:  # a console that cannot host a live display
            logger.debug("no live start display; logging progress instead", exc_info=True)
            with self._lock:
                self._live_mode = False
            return
        with self._lock:
            stopped = self._outcome is not None  # stop() ran meanwhile, on another thread
            if not stopped:
                self._live = live
        if stopped:
            live.stop()

    def stop(self, success: bool = True, error: BaseException | str | None = None) -> None:
        """End the display, showing the outcome: ``running`` or ``failed: <error>``.

        Only the first call has an effect; updates after it are ignored.
        """
        with self._log_lock:
            with self._lock:
                if self._outcome is not None:
                    return
                if self._started_at is None:
                    self._started_at = time.monotonic()
                self._ended_at = time.monotonic()
                self._success = bool(success) and error is None
                self._outcome = "running" if self._success else _describe_error(error)
                took = _format_elapsed(self._ended_at - self._started_at)
                if self._success:
                    counts = f"{self._ready}/{self.requested_workers} workers"
                    message = f"{self._label}: {self._outcome} ({counts}, {took})"
                else:
                    where = f" while {_lower_first(self._phase)}" if self._phase else ""
                    message = f"{self._label}: {self._outcome} (after {took}{where})"
                live, self._live = self._live, None
            self._log(message)
        if live is not None:
            # Outside our lock: the live display's own lock is taken before ours when it draws.
            # Jupyter needs the explicit refresh: rich's stop() does not redraw there.
            try:
                live.refresh()
            finally:
                live.stop()
                console = live.console
                if console.is_jupyter:
                    console.print(self)  # an output cell keeps it, also in a saved notebook
                elif not console.is_terminal:
                    console.line()  # a file gets the final display without its last newline

    def refresh(self) -> None:
        """Redraw the live display now instead of at its next tick (no-op without one)."""
        live = self._live
        if live is not None:
            live.refresh()

    def __enter__(self) -> StartProgress:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.stop(success=exc is None, error=exc)
        return False  # never swallow the exception

    # --------------------------------------------------------------------------- updates

    def _log(self, message: str) -> None:
        """Log one event: INFO as the display itself, DEBUG when something else shows it.

        Called holding ``_log_lock`` (so lines come out in the order of the changes) but not
        ``_lock``, which drawing takes: a logging handler that writes to the live display's
        console (rich's ``RichHandler``) waits for the display, which may be waiting for
        ``_lock``.
        """
        level = logging.INFO if self.show and not self._live_mode else logging.DEBUG
        logger.log(level, message)

    def phase(self, name: str) -> None:
        """Enter a new phase (free text, e.g. ``"Provisioning"``); repeating it does nothing."""
        name = str(name)
        with self._log_lock:
            with self._lock:
                if self._outcome is not None or name == self._phase:
                    return
                self._phase = name
            self._log(f"{self._label}: {name}")

    def dashboard(self, url: str) -> None:
        """Record the dashboard address, once known; repeating it does nothing."""
        url = str(url)
        with self._log_lock:
            with self._lock:
                if self._outcome is not None or not url or url == self._dashboard:
                    return
                self._dashboard = url
            self._log(f"{self._label}: dashboard at {url}")

    def workers(self, ready: int) -> None:
        """Report how many workers are connected so far; an unchanged count does nothing."""
        ready = max(0, int(ready))
        with self._log_lock:
            with self._lock:
                if self._outcome is not None or ready == self._ready:
                    return
                self._ready = ready
            self._log(f"{self._label}: {ready}/{self.requested_workers} workers ready")

    def attached(self) -> None:
        """Note that this start attached to an already running cluster instead of creating one."""
        with self._log_lock:
            with self._lock:
                if self._outcome is not None or self._attached:
                    return
                self._attached = True
            self._log(f"{self._label}: attached to the existing cluster")

    # ------------------------------------------------------------------------- rendering

    def _snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "phase": self._phase,
                "ready": self._ready,
                "dashboard": self._dashboard,
                "attached": self._attached,
                "outcome": self._outcome,
                "success": self._success,
                "elapsed": self.elapsed,
            }

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Render the current state (called by rich's live display, a few times per second)."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.spinner import Spinner
        from rich.style import Style
        from rich.table import Table
        from rich.text import Text

        state = self._snapshot()
        ascii_only = options.ascii_only
        title = Text.assemble(
            ("Cluster ", ""), (self.cluster_name, "bold"), (f" on {self.backend}", "dim")
        )
        if state["outcome"] is None:
            header: Any = Spinner("line" if ascii_only else "dots", text=title, style="cyan")
        elif state["success"]:
            header = Text.assemble(("+ " if ascii_only else "✔ ", "bold green"), title)
        else:
            header = Text.assemble(("x " if ascii_only else "✘ ", "bold red"), title)

        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()

        requested = self.requested_workers
        count = Text(f"{state['ready']}/{requested}")
        if requested > 0:
            bar = ProgressBar(total=requested, completed=min(state["ready"], requested), width=30)
            cells = Table.grid(padding=(0, 1))
            cells.add_row(bar, count)
            grid.add_row("  Workers", cells)
        else:
            grid.add_row("  Workers", count)
        grid.add_row("  Elapsed", Text(_format_elapsed(state["elapsed"])))
        if state["dashboard"]:
            link = state["dashboard"]
            grid.add_row("  Dashboard", Text(link, style=Style(link=link, color="blue")))

        if state["outcome"] is None:
            phase = state["phase"] or "Starting"
            if state["attached"]:
                phase += " (attached to the existing cluster)"
            grid.add_row("  Status", Text(phase, style="cyan"))
        elif state["success"]:
            outcome = state["outcome"] + (" (attached)" if state["attached"] else "")
            grid.add_row("  Status", Text(outcome, style="bold green"))
        else:
            outcome = state["outcome"]
            if state["phase"]:
                outcome += f" (while {_lower_first(state['phase'])})"
            grid.add_row("  Status", Text(outcome, style="bold red"))
        yield Group(header, grid)

    def __repr__(self) -> str:
        state = self._outcome or self._phase or "not started"
        return (
            f"<StartProgress {self.cluster_name!r} on {self.backend!r}: {state}, "
            f"{self._ready}/{self.requested_workers} workers>"
        )
