"""The API server, a fan-out worker and a gateway in the test's own process (aiohttp test
servers on free ports), wired as in production: the gateway resumes through this API
server, the worker has a consumer group of its own that starts at the topics' end."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass

from core.settings import Settings
from fanout.app import CONSUMER
from fanout.app import create_app as create_fanout
from tests.support.api import Client, MakeClient
from tests.support.api_server import serve_api
from tests.support.gateway_server import serve_gateway


@dataclass(frozen=True, slots=True)
class InProcess:
    api: Client
    worker: Client
    gw: Client


async def in_process_system(settings: Settings, aiohttp_client: MakeClient) -> InProcess:
    live = dataclasses.replace(
        settings,
        fanout_group=f"fanout-{uuid.uuid4().hex[:8]}",
        fanout_offset_reset="latest",
        gateway_connects_per_ip=1000,
    )
    api = await aiohttp_client(serve_api(live))
    worker = await aiohttp_client(create_fanout(live))
    await asyncio.wait_for(worker.app[CONSUMER].assigned.wait(), 30)
    gw_settings = dataclasses.replace(live, gateway_api_url=str(api.make_url("")).rstrip("/"))
    gw = await aiohttp_client(serve_gateway(gw_settings))
    return InProcess(api, worker, gw)
