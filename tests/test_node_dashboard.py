"""The scheduler's dashboard is added after the scheduler starts; early page requests wait for it."""

import asyncio

from distributed import Scheduler
from tornado.httpclient import AsyncHTTPClient

from coiled_core.node.dashboard import DeferredDashboard, can_add_dashboard_later


def test_only_distributed_schedulers_without_a_dashboard_setting_defer_it():
    address = {"dashboard_address": "127.0.0.1:0"}
    assert can_add_dashboard_later(Scheduler, address)
    assert not can_add_dashboard_later(Scheduler, {**address, "dashboard": True})
    assert not can_add_dashboard_later(Scheduler, {})
    assert not can_add_dashboard_later(object, address)


def test_a_page_requested_before_the_dashboard_waits_for_it():
    async def scenario():
        async with Scheduler(host="127.0.0.1", port=0, dashboard=False, dashboard_address="127.0.0.1:0") as scheduler:
            base = f"http://127.0.0.1:{scheduler.http_server.port}"
            dashboard = DeferredDashboard(scheduler)
            client = AsyncHTTPClient()
            early = asyncio.ensure_future(client.fetch(f"{base}/status", raise_error=False))
            await asyncio.sleep(0.5)
            assert not early.done(), "the page must wait for the dashboard, not fail"
            # Routes the scheduler already serves are not held up.
            health = await client.fetch(f"{base}/health", raise_error=False)
            assert health.code == 200
            await dashboard.add()
            page = await asyncio.wait_for(early, 30)
            assert page.code == 200
            assert b"bokeh" in page.body.lower()
            assert (await client.fetch(f"{base}/no-such-page", raise_error=False)).code == 404

    asyncio.run(scenario())
