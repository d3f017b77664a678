"""What the server tests share: a real `VoiceServer` on free loopback ports with Twilio's credentials, the
Twilio simulator on its own thread as the phone network, and small clients for the webhook and the media socket."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from telephony.fake_twilio import FakeTwilio
from telephony.server import VoiceServer
from telephony.simulator import Endpoint, SimulatedCall, fetch_twiml, simulate_call, stream_target
from voicebot.config import ServerSettings, Settings

AC = "AC" + "5" * 32
AUTH = "test-auth-token-0123456789abcdef"
PUBLIC = "https://voicebot.test"
HUMAN = "+15550100123"
SPEED = 1.0
MAX_LEAD_MS = 200


Scenario = Callable[[VoiceServer], Awaitable[None]]


def run_server(settings: Settings, agent, fake: FakeTwilio, scenario: Scenario, **changes: object) -> None:
    """Start a server on free ports, run `scenario` against it, shut it down."""

    async def main() -> None:
        server_settings = ServerSettings(
            port=0,
            media_port=0,
            twilio_account_sid=AC,
            twilio_auth_token=AUTH,
            public_url=PUBLIC,
            twilio_api_url=fake.url,
            human_number=HUMAN,
        )
        server = VoiceServer(
            dataclasses.replace(settings, server=dataclasses.replace(server_settings, **changes)), agent
        )
        await server.start()
        try:
            await scenario(server)
        finally:
            await server.shutdown(timeout_s=0)

    asyncio.run(main())


async def place_call(server: VoiceServer, wav: Path, **options: object) -> SimulatedCall:
    """Run the simulator on its own thread and event loop, as the phone network is its own machine: the
    server's work must not stall the caller's clock (that would make its lead measurement meaningless)."""
    phone_network = ThreadPoolExecutor(1)  # not the default pool: the server runs its jobs there
    try:
        call = simulate_call(endpoint(server), wav, **options)
        return await asyncio.get_running_loop().run_in_executor(phone_network, asyncio.run, call)
    finally:
        phone_network.shutdown(wait=False)  # never block the server's loop the simulator talks to


def endpoint(server: VoiceServer, auth_token: str = AUTH) -> Endpoint:
    return Endpoint(
        f"http://127.0.0.1:{server.http_port}",
        server.server.public_url,
        f"ws://127.0.0.1:{server.media_port}/media",
        auth_token,
        AC,
    )


async def http(server: VoiceServer, method: str, path: str, **kwargs) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"http://127.0.0.1:{server.http_port}{path}", **kwargs) as response,
    ):
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def metric(server: VoiceServer, series: str) -> float:
    _, _, text = await http(server, "GET", "/metrics")
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def signed(url: str, params: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(AUTH).compute_signature(url, params)}


def webhook_form(call_sid: str) -> dict[str, str]:
    return {"CallSid": call_sid, "AccountSid": AC, "From": "+15550100199", "To": "+15550100000"}


@asynccontextmanager
async def media_socket(server: VoiceServer, headers: dict[str, str] | None = None) -> AsyncIterator:
    url = f"ws://127.0.0.1:{server.media_port}/media"
    headers = signed(f"wss://{PUBLIC.removeprefix('https://')}/media", {}) if headers is None else headers
    async with connect(url, additional_headers=headers) as ws:
        yield ws


async def token_for(server: VoiceServer, call_sid: str) -> str:
    target = stream_target(await fetch_twiml(endpoint(server), call_sid, "+15550100199"))
    assert target is not None
    return target[1]["token"]


async def closed_with(ws) -> int | None:
    """Read until the server closes the socket; its close code."""
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    return ws.close_code


async def until_idle(server: VoiceServer) -> None:
    """Wait until the server has finished with every call (records read, metrics counted)."""
    async with asyncio.timeout(10):
        while server.calls_active:
            await asyncio.sleep(0.02)
