"""Watchdog: a worker whose scheduler stops answering ends itself.

distributed's ``death_timeout`` only covers a worker's first connection. A scheduler that is
frozen (SIGSTOP, a hung host) keeps its TCP connections open, so its workers would wait forever
and, on a cloud, keep their machines running. The watchdog pings the scheduler and ends the worker
once no answer came for ``timeout`` seconds.

It runs in two places: in each worker process, as a worker preload (``dask_setup``), because a
nanny-run worker forked from a frozen node agent cannot count on its parent; and in the node agent
of worker-only nodes, which then shuts the whole node down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Awaitable, Callable

logger = logging.getLogger("coiled_core.node")

#: Environment variable carrying the watchdog timeout (seconds) into worker processes.
TIMEOUT_VARIABLE = "COILED_WATCHDOG_TIMEOUT"
#: Environment variable carrying how long a worker may wait for its scheduler's first answer.
FIRST_CONTACT_VARIABLE = "COILED_WATCHDOG_FIRST_CONTACT"


async def watch_scheduler(
    ping: Callable[[], Awaitable[Any]],
    timeout: float,
    on_lost: Callable[[str], Awaitable[None]],
    first_contact_timeout: float | None = None,
) -> None:
    """Call ``ping`` until it has failed for ``timeout`` seconds, then await ``on_lost(reason)``.

    Before the scheduler first answers, the deadline is ``first_contact_timeout`` (a worker node
    may boot before its scheduler); None waits for first contact indefinitely.
    """
    interval = max(0.2, min(5.0, timeout / 4))
    started = time.monotonic()
    last_answer: float | None = None
    # Several failures in a row, not just elapsed time: after this process's own event loop
    # was blocked for a while, the clock alone would blame the scheduler.
    failures = 0
    while True:
        try:
            await asyncio.wait_for(ping(), interval)
            last_answer = time.monotonic()
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception:
            failures += 1
        now = time.monotonic()
        if last_answer is None:
            if first_contact_timeout and now - started > first_contact_timeout:
                await on_lost(f"the scheduler did not answer within {first_contact_timeout:g}s of start")
                return
        elif failures >= 3 and now - last_answer > timeout:
            await on_lost(f"the scheduler has not answered for {timeout:g}s")
            return
        await asyncio.sleep(interval)


def dask_setup(worker) -> None:
    """Worker preload: start the watchdog in this worker's process."""
    timeout = float(os.environ.get(TIMEOUT_VARIABLE) or 0)
    if timeout <= 0:
        return
    first_contact = float(os.environ.get(FIRST_CONTACT_VARIABLE) or 0) or None

    async def ping():
        return await worker.scheduler.echo(data="ping")

    async def lost(reason: str) -> None:
        logger.error("worker %s ends: %s", worker.name, reason)
        try:
            # nanny=True: the nanny is told first, else it would restart the worker it sees exit
            # (and the new one would wait on the frozen scheduler again).
            await asyncio.wait_for(worker.close(nanny=True, reason="scheduler-unresponsive"), 5)
        finally:
            # A frozen parent cannot reap or restart us; leave no process behind.
            os._exit(1)

    worker._coiled_watchdog = asyncio.ensure_future(watch_scheduler(ping, timeout, lost, first_contact))
