"""The server under hostile or broken input, and on its way down: every fault is refused cheaply, counted, and
never takes another call with it. A real server on 127.0.0.1 with the real agent; no call here needs speech."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import sqlite3
import time

import aiohttp
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sample_calls import SAMPLE_CALLS
from server_harness import (
    AC,
    PUBLIC,
    closed_with,
    endpoint,
    http,
    media_socket,
    metric,
    place_call,
    run_server,
    signed,
    token_for,
    until_idle,
    webhook_form,
)
from store_checks import written_back
from websockets.exceptions import ConnectionClosed, InvalidStatus

from telephony.protocol import Play, TwilioStreamWriter, parse_outbound
from telephony.server import VoiceServer
from telephony.simulator import SimulatorError, fetch_twiml
from voicebot.session import CallSession, DtmfIn


@pytest.fixture(scope="module")
def agent(patient_agent):
    return patient_agent


def new_call() -> tuple[str, TwilioStreamWriter]:
    call_sid = "CA" + secrets.token_hex(16)
    return call_sid, TwilioStreamWriter("MZ" + secrets.token_hex(16), call_sid, AC)


async def first_audio(ws, writer: TwilioStreamWriter) -> None:
    """The greeting's first chunk: the call is up."""
    assert isinstance(parse_outbound(await asyncio.wait_for(ws.recv(), 10), writer.stream_sid), Play)


async def serves_a_call(server: VoiceServer) -> None:
    """A normal call after whatever came before: token, start, greeting audio, stop, and a complete record."""
    call_sid, writer = new_call()
    token = await token_for(server, call_sid)
    async with media_socket(server) as ws:
        await ws.send(writer.connected())
        await ws.send(writer.start({"token": token}))
        await ws.send(writer.media(b"\xff" * 160, 0))
        await first_audio(ws, writer)
        await ws.send(writer.stop())
        assert await closed_with(ws) == 1000
    await until_idle(server)
    record = await asyncio.to_thread(server.agent.store.get_call, call_sid)
    assert record is not None and record["ended_at"] is not None


async def settled(tasks: int) -> None:
    """Wait until no more asyncio tasks are alive than `tasks`: what a call started has all ended."""
    async with asyncio.timeout(5):
        while len(asyncio.all_tasks()) > tasks:
            await asyncio.sleep(0.02)


# ---------------------------------------------------------------- replays and duplicates


def test_a_replayed_webhook_for_a_call_that_has_streamed_is_refused(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        call_sid, writer = new_call()
        form = webhook_form(call_sid)
        token = await token_for(server, call_sid)
        async with media_socket(server) as ws:
            await ws.send(writer.start({"token": token}))
            await first_audio(ws, writer)
            status, _, body = await http(server, "POST", "/twiml", data=form, headers=signed(PUBLIC + "/twiml", form))
            assert status == 409 and "already been answered" in body, "while the call is live"
            await ws.send(writer.stop())
        await until_idle(server)
        status, _, _ = await http(server, "POST", "/twiml", data=form, headers=signed(PUBLIC + "/twiml", form))
        assert status == 409, "and after it ended"
        assert await metric(server, 'voicebot_auth_failures_total{check="webhook_replay"}') == 2

    run_server(settings, agent, fake_twilio, scenario)


def test_a_replay_after_a_restart_is_refused_by_the_calls_record(settings, agent, fake_twilio):
    call_sid, writer = new_call()

    async def first_run(server: VoiceServer) -> None:
        token = await token_for(server, call_sid)
        async with media_socket(server) as ws:
            await ws.send(writer.start({"token": token}))
            await first_audio(ws, writer)
            await ws.send(writer.stop())
        await until_idle(server)

    async def second_run(server: VoiceServer) -> None:
        with pytest.raises(SimulatorError, match="HTTP 409"):
            await fetch_twiml(endpoint(server), call_sid, "+15550100199")

    run_server(settings, agent, fake_twilio, first_run)
    run_server(settings, agent, fake_twilio, second_run)


def test_a_dial_report_for_a_call_not_handed_off_from_here_is_refused(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        with pytest.raises(SimulatorError, match="HTTP 409"):
            await fetch_twiml(endpoint(server), "CA" + secrets.token_hex(16), "+15550100199", "no-answer")
        assert await metric(server, 'voicebot_auth_failures_total{check="dial_replay"}') == 1

    run_server(settings, agent, fake_twilio, scenario)


# ---------------------------------------------------------------- limits


def test_sockets_waiting_for_start_are_limited_per_source_and_in_all(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        async with media_socket(server), media_socket(server):
            await asyncio.sleep(0.05)  # both handlers have started
            with pytest.raises(InvalidStatus) as refused:
                async with media_socket(server):
                    pass
            assert refused.value.response.status_code == 503
        await asyncio.sleep(0.05)
        assert await metric(server, 'voicebot_errors_total{kind="socket_limit"}') == 1
        await serves_a_call(server)  # the waiting sockets are gone: room again

    run_server(settings, agent, fake_twilio, scenario, max_pending_per_source=2)


def test_a_token_nobody_redeems_holds_capacity_only_briefly(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        await token_for(server, "CA" + secrets.token_hex(16))  # Twilio fetched the TwiML, the stream never came
        twiml = await fetch_twiml(endpoint(server), "CA" + secrets.token_hex(16), "+15550100199")
        assert "<Connect" not in twiml, "the pending stream holds the one place"
        await asyncio.sleep(0.6)
        await serves_a_call(server)

    run_server(settings, agent, fake_twilio, scenario, max_calls=1, stream_token_ttl_s=0.5)


def test_a_stream_that_goes_quiet_is_ended_after_the_idle_timeout(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        call_sid, writer = new_call()
        token = await token_for(server, call_sid)
        async with media_socket(server) as ws:
            await ws.send(writer.start({"token": token}))
            started = time.monotonic()
            assert await closed_with(ws) == 1000
            assert time.monotonic() - started < 5
        await until_idle(server)
        assert await metric(server, 'voicebot_calls_ended_total{how="idle"}') == 1
        record = await asyncio.to_thread(agent.store.get_call, call_sid)
        assert record["ended_at"] is not None

    run_server(settings, agent, fake_twilio, scenario, idle_timeout_s=0.5)


def test_a_stream_sending_audio_faster_than_real_time_is_closed_as_a_flood(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        call_sid, writer = new_call()
        token = await token_for(server, call_sid)
        async with media_socket(server) as ws:
            await ws.send(writer.start({"token": token}))
            with contextlib.suppress(ConnectionClosed):  # the server may close while the flood is still going out
                for i in range(500):  # 10 s of audio, as fast as the socket takes it
                    await ws.send(writer.media(b"\xff" * 160, i * 20))
            assert await closed_with(ws) == 1008
        await until_idle(server)
        assert await metric(server, 'voicebot_calls_ended_total{how="flood"}') == 1
        await serves_a_call(server)

    run_server(settings, agent, fake_twilio, scenario, max_media_ahead_s=1.0)


# ---------------------------------------------------------------- faults of ours


def test_a_call_whose_session_raises_is_closed_cleanly_and_the_next_call_is_served(
    settings, agent, fake_twilio, monkeypatch
):
    real = CallSession.handle

    def handle(session, event):
        if isinstance(event, DtmfIn):
            raise RuntimeError("a bug in the session")
        return real(session, event)

    async def scenario(server: VoiceServer) -> None:
        before = len(asyncio.all_tasks())
        call_sid, writer = new_call()
        token = await token_for(server, call_sid)
        monkeypatch.setattr(CallSession, "handle", handle)
        async with media_socket(server) as ws:
            await ws.send(writer.start({"token": token}))
            await first_audio(ws, writer)
            await ws.send(writer.dtmf("5"))
            assert await closed_with(ws) == 1011
        monkeypatch.undo()
        await until_idle(server)
        assert await metric(server, 'voicebot_calls_ended_total{how="internal_error"}') == 1
        await settled(before)
        record = await asyncio.to_thread(agent.store.get_call, call_sid)
        assert record["ended_at"] is not None
        await serves_a_call(server)

    run_server(settings, agent, fake_twilio, scenario)


# ---------------------------------------------------------------- shutdown


def test_shutdown_still_takes_the_stream_of_twiml_already_issued_and_ends_when_it_ends(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        call_sid, writer = new_call()
        token = await token_for(server, call_sid)
        stopping = asyncio.create_task(server.shutdown(timeout_s=20))
        await asyncio.sleep(0.1)
        assert not stopping.done(), "a stream is on its way: the server waits for it"
        async with media_socket(server) as ws:
            await ws.send(writer.start({"token": token}))
            await first_audio(ws, writer)
            await ws.send(writer.stop())
        started = time.monotonic()
        await asyncio.wait_for(stopping, 10)
        assert time.monotonic() - started < 5, "done once the last call ended, not at the timeout"
        record = await asyncio.to_thread(agent.store.get_call, call_sid)
        assert record["ended_at"] is not None

    run_server(settings, agent, fake_twilio, scenario)


def test_shutdown_bounds_a_call_that_starts_while_draining_and_a_second_signal_stops_waiting(
    settings, agent, fake_twilio
):
    async def scenario(server: VoiceServer) -> None:
        call_sid, writer = new_call()
        token = await token_for(server, call_sid)
        stopping = asyncio.create_task(server.shutdown(timeout_s=60))
        async with media_socket(server) as ws:
            await ws.send(writer.start({"token": token}))
            await first_audio(ws, writer)
            server.force()  # the second SIGTERM
            assert await closed_with(ws) == 1001
        await asyncio.wait_for(stopping, 10)
        record = await asyncio.to_thread(agent.store.get_call, call_sid)
        assert record["ended_at"] is not None, "its record flushed before the server stopped"
        assert server.metrics.value("voicebot_calls_ended_total", how="shutdown") == 1

    run_server(settings, agent, fake_twilio, scenario)


# ---------------------------------------------------------------- generated hostile input

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
MESSAGES = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=64),
    JSON.map(json.dumps),
    st.fixed_dictionaries(
        {"event": st.sampled_from(["start", "media", "mark", "dtmf", "stop", "connected", "x"])},
        optional={"streamSid": st.text(max_size=40), "start": JSON, "media": JSON, "mark": JSON, "dtmf": JSON},
    ).map(json.dumps),
)


@hypothesis_settings(
    max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(messages=st.lists(MESSAGES, min_size=1, max_size=6), valid_start=st.booleans())
def test_any_messages_on_the_media_socket_get_a_counted_refusal_or_a_call_and_the_next_call_is_served(
    settings, agent, fake_twilio, messages, valid_start
):
    async def scenario(server: VoiceServer) -> None:
        call_sid, writer = new_call()
        token = await token_for(server, call_sid)
        async with media_socket(server) as ws:
            if valid_start:
                await ws.send(writer.start({"token": token}))
            for message in messages:
                await ws.send(message)
            await ws.send(writer.stop())
            code = await closed_with(ws)
        assert code in (1000, 1002, 1003, 1008), f"never 1011 for what the caller sent: {code}"
        await until_idle(server)
        assert await metric(server, 'voicebot_errors_total{kind="internal"}') == 0
        await serves_a_call(server)

    run_server(settings, agent, fake_twilio, scenario)


def test_metrics_and_health_can_listen_on_an_internal_address_only(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        assert server.metrics_port and server.metrics_port != server.http_port
        status, _, _ = await http(server, "GET", "/metrics")
        assert status == 404, "not on the public port"
        async with aiohttp.ClientSession() as session:
            for path in ("/metrics", "/healthz"):
                async with session.get(f"http://127.0.0.1:{server.metrics_port}{path}") as response:
                    assert response.status == 200
                    text = await response.text()
            assert json.loads(text)["status"] == "ok"

    run_server(settings, agent, fake_twilio, scenario, metrics_port=0)


def test_a_locked_database_delays_the_records_not_the_call_and_no_caller_words_are_logged(
    settings, agent, fake_twilio, caplog
):
    """Another process holds the store's write lock for the whole call (longer than the store waits): the call
    is answered as usual, its records wait in the spool and land once the lock is gone. At INFO, the logs carry
    nothing the caller said."""
    wav = next(c for c in SAMPLE_CALLS if c.stem == "faq_returns")

    async def scenario(server: VoiceServer) -> None:
        other = sqlite3.connect(agent.store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            call = await place_call(server, wav)
            await until_idle(server)
            assert await asyncio.to_thread(agent.store.get_call, call.call_sid) is None, "nothing written yet"
        finally:
            other.execute("ROLLBACK")
            other.close()
        record = await asyncio.to_thread(written_back, agent, call.call_sid)
        assert [(t["route"], t["failed_stage"]) for t in record["turns"]] == [("faq", None)]
        words = {w for t in record["turns"] for w in t["caller_text"].lower().split() if len(w) > 4}
        assert words and not any(w in caplog.text.lower() for w in words), "caller speech in the INFO logs"

    with caplog.at_level(logging.INFO):
        run_server(settings, agent, fake_twilio, scenario)
