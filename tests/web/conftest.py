"""What every web client test module shares: the system as the page meets it (server,
gateway, fan-out as processes; tests/support/browser.client_system), Chromium, and an
API client for the other side of a conversation. Module-scoped: one system and one
browser per module. A module changes the system's settings by overriding
`client_settings`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser

from core.settings import Settings
from tests.support.browser import Api, client_system
from tests.support.system import System, chromium


@pytest.fixture(scope="module")
def client_settings(settings: Settings) -> Settings:
    return settings


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(client_settings: Settings) -> AsyncIterator[System]:
    async with client_system(client_settings) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as opened:
        yield opened


@pytest_asyncio.fixture(loop_scope="module")
async def api(system: System) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, system.api_url)
