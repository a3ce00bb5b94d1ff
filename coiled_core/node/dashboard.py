"""The scheduler's dashboard, added while the workers start.

Importing distributed's bokeh dashboard takes about 0.3 s of CPU, which would delay the start of
every cluster. The node agent starts distributed's scheduler without it (the scheduler's HTTP
server still listens on the dashboard address), starts the workers, and meanwhile imports the
dashboard in a thread and adds it to the running server. A page requested before the dashboard
is ready waits for it and is then redirected to its own address, so a dashboard link works from
the moment the scheduler does.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from importlib.util import find_spec
from typing import Any

from tornado import web

logger = logging.getLogger("coiled_core.node")

#: How long a page request waits for the dashboard before it is answered anyway.
WAIT_FOR_DASHBOARD = 60.0


def can_add_dashboard_later(cls: Any, options: dict[str, Any]) -> bool:
    """Whether a scheduler of class ``cls`` with ``options`` can get its dashboard after it starts:
    distributed's own scheduler, a dashboard address given, ``dashboard`` not set by the user,
    and bokeh installed."""
    from distributed import Scheduler

    return (
        isinstance(cls, type)
        and issubclass(cls, Scheduler)
        and "dashboard" not in options
        and bool(options.get("dashboard_address"))
        and find_spec("bokeh") is not None
    )


class _WaitForDashboard(web.RequestHandler):
    """Any page not served yet: wait until the dashboard is added, then ask again."""

    def initialize(self, ready: asyncio.Event) -> None:
        self.ready = ready

    async def get(self, *args: Any) -> None:
        try:
            await asyncio.wait_for(self.ready.wait(), WAIT_FOR_DASHBOARD)
        except asyncio.TimeoutError:
            pass
        # 307 keeps the method; the dashboard (or a 404) answers the repeated request.
        self.redirect(self.request.uri, status=307)


class DeferredDashboard:
    """Adds distributed's dashboard to ``scheduler`` (started with ``dashboard=False``) later."""

    def __init__(self, scheduler: Any, prefix: str | None = "/"):
        self.scheduler = scheduler
        self.prefix = prefix
        self.ready = asyncio.Event()
        self._waiting_room = web.Application([(r"/.*", _WaitForDashboard, {"ready": self.ready})])
        # Served after every route the scheduler already has (health, metrics, JSON, ...).
        scheduler.http_application.add_application(self._waiting_room)

    async def add(self) -> None:
        """Import the dashboard in a thread, add it, and let waiting requests through."""
        try:
            module = await asyncio.to_thread(importlib.import_module, "distributed.dashboard.scheduler")
            module.connect(self.scheduler.http_application, self.scheduler.http_server, self.scheduler, prefix=self.prefix)
        except Exception:
            logger.warning("the scheduler runs without its dashboard", exc_info=True)
        finally:
            self.scheduler.http_application.applications.remove(self._waiting_room)
            self.ready.set()
