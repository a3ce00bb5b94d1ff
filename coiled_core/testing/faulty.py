"""Scheduler and worker classes that fail at a chosen step, for start-failure tests.

Imported by name on the node (the node agent), so this module must be importable there:
coiled_core is installed wherever a node agent runs.
"""

import asyncio

from distributed import Nanny, Scheduler


class SchedulerFailsToStart(Scheduler):
    async def start_unsafe(self):
        raise RuntimeError("injected: scheduler start failure")


class SchedulerNeverStarts(Scheduler):
    async def start_unsafe(self):
        await asyncio.sleep(3600)


class NannyFailsToStart(Nanny):
    async def start_unsafe(self):
        raise RuntimeError("injected: worker start failure")


class NannyNeverJoins(Nanny):
    async def start_unsafe(self):
        await asyncio.sleep(3600)
