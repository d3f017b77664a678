"""`voicebot serve` end to end: a real server on 127.0.0.1 with the real warmed agent and a real SQLite store,
the Twilio simulator as the phone network, and a local fake of Twilio's REST API behind the real twilio client.

Calls run in real time, as Twilio's do: the server paces against the media clock it hears and falls back on
wall time when frames stall, so a sped-up caller on a thread the machine is slow to schedule made the server's
wall-clock fallback run ahead of the caller's clock and the lead look longer than it is (CI failed on it).
Everything Twilio would check is checked: signatures, tokens, message shapes, chunk sizes and the lead of the
audio sent ahead.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from pathlib import Path

import numpy as np
import pytest
from sample_calls import SAMPLE_CALLS, check_record
from server_harness import (
    AC,
    AUTH,
    HUMAN,
    MAX_LEAD_MS,
    PUBLIC,
    SPEED,
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
from websockets.exceptions import InvalidStatus

from telephony.call_control import CallControl
from telephony.fake_twilio import FakeTwilio
from telephony.metrics import ServerMetrics
from telephony.protocol import Play, TwilioStreamWriter, parse_outbound
from telephony.security import DIAL_PATH
from telephony.server import StreamTransport, VoiceServer, _chunks
from telephony.simulator import SimulatedCall, fetch_twiml
from telephony.twiml import dial_human
from voicebot import cli, prompts
from voicebot.audio import Resampler, pcm16_to_float
from voicebot.routes import Line

CALLS = SAMPLE_CALLS


@pytest.fixture(scope="module")
def agent(patient_agent):
    return patient_agent


def assert_paced(call: SimulatedCall) -> None:
    assert call.chunk_ms, "no audio reached the caller"
    assert min(call.chunk_ms) >= 20 and max(call.chunk_ms) <= 60, sorted(set(call.chunk_ms))
    # The pacer keeps at most 160 ms ahead of the media clock it hears, 180 where playback restarts on a frame
    # boundary (measured: p95 155-159 ms, at most 178 ms over the sample calls).
    assert call.lead_ms(1.0) <= MAX_LEAD_MS, sorted(call.leads_ms)[-10:]


def assert_expected(call: SimulatedCall, record: dict, expect: dict, fake: FakeTwilio) -> None:
    """The sidecar's `expect` against the stored call record and what reached Twilio's REST API."""
    assert check_record(record, expect) == [], record
    assert record["ended_at"] is not None
    requests = fake.for_call(call.call_sid)
    if expect["handoff"]:
        assert [r.form["Twiml"] for r in requests] == [dial_human(HUMAN, PUBLIC + DIAL_PATH)]
    elif expect["hangup"]:
        assert [r.form for r in requests] == [{"Status": "completed"}]
    else:
        assert requests == []
    if requests:  # only once the farewell's last mark came back from the phone
        assert call.closed_by_server and requests[0].at > max(call.mark_echo_wall)


# ---------------------------------------------------------------- units of the server layer


def test_outbound_chunks_are_20_to_60_ms():
    for samples in (1, 100, 159, 160, 320, 321, 480, 481, 3333, 8000):
        chunks = _chunks(b"\x00" * samples)
        assert b"".join(chunks)[:samples] == b"\x00" * samples
        assert all(160 <= len(c) <= 480 for c in chunks), (samples, [len(c) for c in chunks])
    assert _chunks(b"") == []


class _Line:
    """A media socket that takes whatever is sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message: str) -> None:
        self.sent.append(message)


def test_closing_the_transport_as_a_frame_arrives_never_hangs():
    """A call ends right as the caller's frame wakes the pacer (it waits for the lead to drain): the pacer
    must still stop. With asyncio.wait_for on Python 3.11 the cancel was lost and shutdown hung."""

    async def scenario() -> None:
        line = _Line()
        transport = StreamTransport(line, "MZ1", "CA1", CallControl("", ""), "", ServerMetrics(lambda: 0))
        transport.start()
        for _ in range(20):
            await transport.play(np.zeros(8000, np.int16))  # a second of audio: the pacer sends its lead
            await asyncio.sleep(0.01)  # and waits
            transport.media_time(20)  # a caller frame sets the wake-up ...
            closing = asyncio.ensure_future(transport.close())  # ... in the same loop turn as the cancel
            done, _ = await asyncio.wait({closing}, timeout=2)
            assert done, "the pacer lost its cancel and kept the call open"
            assert line.sent and all(isinstance(parse_outbound(m, "MZ1"), Play) for m in line.sent)
            transport.start()
        await transport.close()

    asyncio.run(scenario())


def test_a_paused_transport_sends_no_audio_until_resumed_and_a_clear_ends_the_pause():
    async def scenario() -> None:
        line = _Line()
        transport = StreamTransport(line, "MZ1", "CA1", CallControl("", ""), "", ServerMetrics(lambda: 0))
        transport.start()
        await transport.play(np.zeros(800, np.int16))  # 100 ms: sent at once, within the lead
        await transport.mark("t1-s1")
        await asyncio.sleep(0.02)
        await transport.pause()
        await transport.play(np.zeros(800, np.int16))
        await transport.mark("t1-s2")
        for t in range(20, 400, 20):  # the caller's frames go on arriving
            transport.media_time(t)
            await asyncio.sleep(0.005)
        kinds = [type(parse_outbound(m, "MZ1")).__name__ for m in line.sent]
        assert kinds == ["Play"] * 3 + ["Mark"], "audio queued while paused waits, the mark behind it too"
        await transport.resume()
        await asyncio.sleep(0.02)
        kinds = [type(parse_outbound(m, "MZ1")).__name__ for m in line.sent]
        assert kinds == ["Play"] * 3 + ["Mark"] + ["Play"] * 3 + ["Mark"], "resumed where it stopped"
        await transport.pause()
        await transport.clear()
        await transport.play(np.zeros(800, np.int16))
        await asyncio.sleep(0.02)
        assert type(parse_outbound(line.sent[-1], "MZ1")).__name__ == "Play", "the next reply plays after a clear"
        await transport.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------- HTTP: webhook, status, health, metrics


def test_webhook_signature_valid_invalid_missing(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        form = webhook_form("CA" + "a" * 32)
        status, ctype, body = await http(server, "POST", "/twiml", data=form, headers=signed(PUBLIC + "/twiml", form))
        assert status == 200 and ctype.startswith("text/xml")
        assert '<Connect><Stream statusCallback="https://voicebot.test/stream-status"' in body
        assert 'url="wss://voicebot.test/media"' in body and '<Parameter name="token" value="' in body
        forged = signed("http://127.0.0.1/twiml", form)  # signed for the address the request came in on
        assert (await http(server, "POST", "/twiml", data=form, headers=forged))[0] == 403
        assert (await http(server, "POST", "/twiml", data=form))[0] == 403
        query = "/twiml?CallSid=CA" + "b" * 32
        assert (await http(server, "GET", query, headers=signed(PUBLIC + query, {})))[0] == 200
        assert await metric(server, 'voicebot_auth_failures_total{check="webhook_signature"}') == 2

    run_server(settings, agent, fake_twilio, scenario)


def test_stream_status_callback_is_signed_and_counts_stream_errors(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        form = {"CallSid": "CA1", "StreamSid": "MZ1", "StreamEvent": "stream-error", "StreamError": "31920"}
        headers = signed(PUBLIC + "/stream-status", form)
        assert (await http(server, "POST", "/stream-status", data=form, headers=headers))[0] == 204
        assert (await http(server, "POST", "/stream-status", data=form))[0] == 403
        assert await metric(server, 'voicebot_errors_total{kind="stream_error"}') == 1
        assert await metric(server, 'voicebot_auth_failures_total{check="status_signature"}') == 1

    run_server(settings, agent, fake_twilio, scenario)


def test_capacity_refusal_is_polite(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        first = await fetch_twiml(endpoint(server), "CA" + "1" * 32, "+15550100199")  # holds the only line
        assert "<Stream" in first
        busy = await place_call(server, CALLS[0], call_sid="CA" + "2" * 32)
        assert busy.refused
        assert "All our lines are busy" in busy.twiml and f"<Dial>{HUMAN}</Dial>" in busy.twiml
        assert await metric(server, 'voicebot_calls_refused_total{reason="capacity"}') == 1

    run_server(settings, agent, fake_twilio, scenario, max_calls=1)

    async def no_human(server: VoiceServer) -> None:
        await fetch_twiml(endpoint(server), "CA" + "3" * 32, "+15550100199")
        twiml = await fetch_twiml(endpoint(server), "CA" + "4" * 32, "+15550100199")
        assert "Please call again soon" in twiml and "<Hangup />" in twiml and "<Dial" not in twiml

    run_server(settings, agent, fake_twilio, no_human, max_calls=1, human_number="")


def test_healthz_and_metrics_format(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        status, ctype, body = await http(server, "GET", "/healthz")
        assert status == 200 and ctype.startswith("application/json")
        assert json.loads(body) == {"status": "ok", "calls_active": 0, "max_calls": 4}
        status, ctype, text = await http(server, "GET", "/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        sample = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)+\})? -?[0-9.e+Inf]+$')
        for line in text.splitlines():
            assert line.startswith(("# HELP ", "# TYPE ")) or sample.match(line), line
        for name in ("calls_active", "calls_total", "turns_total", "tickets_total", "handoffs_total", "errors_total"):
            assert f"# TYPE voicebot_{name} " in text
        assert "# TYPE voicebot_stage_latency_seconds histogram" in text

    run_server(settings, agent, fake_twilio, scenario)


# ---------------------------------------------------------------- media socket: signatures, tokens, protocol


def test_upgrade_signature_invalid_or_missing_is_refused_in_the_handshake(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        wrong = signed("wss://elsewhere.test/media", {})
        for headers in (wrong, {}):
            with pytest.raises(InvalidStatus) as refused:
                async with media_socket(server, headers):
                    pass
            assert refused.value.response.status_code == 403
            assert b"X-Twilio-Signature" in refused.value.response.body
        assert await metric(server, 'voicebot_auth_failures_total{check="upgrade_signature"}') == 2

    run_server(settings, agent, fake_twilio, scenario)


def test_stream_token_wrong_or_reused_is_refused(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        call_sid = "CA" + secrets.token_hex(16)
        token = await token_for(server, call_sid)
        writer = TwilioStreamWriter("MZ" + secrets.token_hex(16), call_sid, AC)
        async with media_socket(server) as ws:
            await ws.send(writer.connected())
            wrong = token[:-1] + ("y" if token.endswith("x") else "x")  # (one token in 64 ends in x)
            await ws.send(writer.start({"token": wrong}))
            assert await closed_with(ws) == 1008
        async with media_socket(server) as ws:  # the right token works once...
            await ws.send(writer.start({"token": token}))
            assert isinstance(parse_outbound(await asyncio.wait_for(ws.recv(), 10), writer.stream_sid), Play)
            await ws.send(writer.stop())
        writer = TwilioStreamWriter("MZ" + secrets.token_hex(16), call_sid, AC)
        async with media_socket(server) as ws:  # ...and never again
            await ws.send(writer.start({"token": token}))
            assert await closed_with(ws) == 1008
        assert await metric(server, 'voicebot_auth_failures_total{check="stream_token"}') == 2

    run_server(settings, agent, fake_twilio, scenario)


@pytest.mark.parametrize(
    ("message", "code", "kind"),
    [
        ("media", 1002, "media_before_start"),
        ('{"event": "start", "start": ', 1002, "bad_json"),
        (b"\xff" * 160, 1003, "binary_frame"),
    ],
)
def test_protocol_faults_before_start_close_the_socket(settings, agent, fake_twilio, message, code, kind):
    async def scenario(server: VoiceServer) -> None:
        writer = TwilioStreamWriter("MZ" + secrets.token_hex(16), "CA" + secrets.token_hex(16), AC)
        async with media_socket(server) as ws:
            await ws.send(writer.connected())
            await ws.send(writer.media(b"\xff" * 160, 0) if message == "media" else message)
            assert await closed_with(ws) == code
        assert await metric(server, f'voicebot_errors_total{{kind="{kind}"}}') == 1
        assert server.calls_active == 0

    run_server(settings, agent, fake_twilio, scenario)


def test_unknown_event_is_counted_and_the_call_goes_on(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        call_sid = "CA" + secrets.token_hex(16)
        writer = TwilioStreamWriter("MZ" + secrets.token_hex(16), call_sid, AC)
        token = await token_for(server, call_sid)
        async with media_socket(server) as ws:
            await ws.send(writer.connected())
            await ws.send(json.dumps({"event": "something-new", "streamSid": writer.stream_sid}))
            await ws.send(writer.start({"token": token}))
            await ws.send(json.dumps({"event": "another-one"}))
            await ws.send(writer.media(b"\xff" * 160, 0))
            assert isinstance(parse_outbound(await asyncio.wait_for(ws.recv(), 10), writer.stream_sid), Play)
            await ws.send(writer.stop())
        assert await metric(server, 'voicebot_errors_total{kind="unknown_event"}') == 2

    run_server(settings, agent, fake_twilio, scenario)


def test_wrong_stream_sid_mid_call_ends_the_call_and_keeps_its_record(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        call_sid = "CA" + secrets.token_hex(16)
        writer = TwilioStreamWriter("MZ" + secrets.token_hex(16), call_sid, AC)
        token = await token_for(server, call_sid)
        async with media_socket(server) as ws:
            await ws.send(writer.start({"token": token}))
            await ws.send(writer.media(b"\xff" * 160, 0))
            await ws.send(TwilioStreamWriter("MZother", call_sid, AC).media(b"\xff" * 160, 20))
            assert await closed_with(ws) == 1002
        await until_idle(server)
        assert await metric(server, 'voicebot_errors_total{kind="wrong_stream_sid"}') == 1
        record = agent.store.get_call(call_sid)
        assert record is not None and record["ended_at"] is not None

    run_server(settings, agent, fake_twilio, scenario)


@pytest.mark.parametrize("send_stop", [True, False], ids=["stop-mid-reply", "early-disconnect"])
def test_caller_leaving_mid_reply_ends_the_call_cleanly(settings, agent, fake_twilio, send_stop):
    async def scenario(server: VoiceServer) -> None:
        call = await place_call(server, CALLS[0], speed=SPEED, hang_up_at_ms=1500, send_stop=send_stop)
        assert not call.closed_by_server and call.chunk_ms  # the greeting was playing
        await until_idle(server)
        record = agent.store.get_call(call.call_sid)
        assert record["ended_at"] is not None and record["turns"] == []
        assert record["greeting"]["interrupted"]  # cut where the caller left
        assert fake_twilio.for_call(call.call_sid) == []  # nothing to hang up: the caller is gone

    run_server(settings, agent, fake_twilio, scenario)


def test_shutdown_with_a_live_call(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        wav = next(c for c in CALLS if c.stem == "multi_turn")
        live = asyncio.create_task(place_call(server, wav, speed=1.0))
        async with asyncio.timeout(10):
            while server.calls_active == 0:
                await asyncio.sleep(0.05)
        stopping = asyncio.create_task(server.shutdown(timeout_s=1.0))
        await asyncio.sleep(0.2)
        status, _, body = await http(server, "GET", "/healthz")
        assert status == 503 and json.loads(body)["status"] == "draining"
        refused = await place_call(server, wav, call_sid="CA" + "9" * 32)
        assert refused.refused
        call = await live
        await stopping
        assert call.closed_by_server and call.close_code == 1001
        record = agent.store.get_call(call.call_sid)
        assert record["ended_at"] is not None  # flushed
        assert server.metrics.value("voicebot_calls_refused_total", reason="shutting_down") == 1

    run_server(settings, agent, fake_twilio, scenario)


# ---------------------------------------------------------------- calls end to end


# Through the real server in real time: one call for each thing the telephony layer carries (a KB answer, an LLM
# stream, a ticket, a transfer, DTMF, a clear, a pause without one, a withdrawn reply, several turns). The others
# only vary what the caller says and how (all run lock-step in test_voice_calls); `make test-full` runs them here.
SERVER_CALLS = {
    "faq_returns",
    "llm_grounded",
    "complaint_ticket",
    "human_request",
    "dtmf_zero",
    "barge_in_answer",
    "backchannels",
    "continuation",
    "multi_turn",
}


@pytest.mark.parametrize(
    "wav", [pytest.param(c, id=c.stem, marks=() if c.stem in SERVER_CALLS else pytest.mark.full) for c in CALLS]
)
def test_sample_call_end_to_end(settings, agent, fake_twilio, wav, tmp_path):
    sidecar = json.loads(wav.with_suffix(".json").read_text())
    expect = sidecar["expect"]

    async def scenario(server: VoiceServer) -> None:
        call = await place_call(server, wav, speed=SPEED, heard_wav=tmp_path / "heard.wav")
        await until_idle(server)  # the caller's `stop` is out; the server may still be closing the record
        record = await asyncio.to_thread(agent.store.get_call, call.call_sid)
        assert record is not None and record["channel"] == "twilio" and record["caller"] == "+1555***0199"
        assert_expected(call, record, expect, fake_twilio)
        assert_paced(call)
        if not any(step.get("continues") for step in sidecar["script"]):  # (a withdrawn reply may clear too)
            cut = int(expect["greeting_interrupted"]) + len(expect["interrupted_turns"])
            bridged = sum("filler" in turn["latency_ms"] for turn in record["turns"])  # "One moment." may be cut
            assert cut <= call.clears <= cut + bridged, "a clear for every reply cut, none for a backchannel or noise"
        assert (tmp_path / "heard.wav").stat().st_size > 44
        answered = [t for t in call.latencies if t.first_audio_ms is not None]
        assert len(answered) >= len(expect["turns"])
        assert await metric(server, "voicebot_calls_total") == 1
        assert await metric(server, "voicebot_tickets_total") == expect["tickets"]

    run_server(settings, agent, fake_twilio, scenario)


def _transcribe_heard(agent, heard: np.ndarray) -> set[str]:
    resampler = Resampler(8000, 16000)
    audio = np.concatenate([resampler.process(pcm16_to_float(heard)), resampler.flush()])
    return set(re.findall(r"[a-z]+", agent.transcriber.transcribe(audio[-30 * 16000 :]).text.lower()))


def test_three_concurrent_calls_stay_isolated(settings, agent, fake_twilio):
    names = ("faq_returns", "complaint_ticket", "human_request")
    wavs = [next(c for c in CALLS if c.stem == name) for name in names]
    callers = ["+15550100111", "+15550100222", "+15550100333"]

    async def scenario(server: VoiceServer) -> None:
        calls = await asyncio.gather(
            *(place_call(server, wav, caller=caller) for wav, caller in zip(wavs, callers, strict=True))
        )
        await until_idle(server)  # a caller hangs up with `stop` and leaves: the server ends the call after
        store = agent.store
        records = [store.get_call(call.call_sid) for call in calls]
        for wav, call, record in zip(wavs, calls, records, strict=True):
            assert_expected(call, record, json.loads(wav.with_suffix(".json").read_text())["expect"], fake_twilio)
            assert_paced(call)
        ticket = store.get_ticket(records[1]["tickets"][0])
        assert ticket.call_id == calls[1].call_sid and ticket.caller == callers[1]
        assert [r.call_sid for r in fake_twilio.requests] == [calls[2].call_sid]
        # Each caller heard their own bot: the words heard overlap their own call's replies the most.
        replies = [set(re.findall(r"[a-z]+", " ".join(t["reply_text"] for t in r["turns"]).lower())) for r in records]
        for i, call in enumerate(calls):
            heard = await asyncio.to_thread(_transcribe_heard, agent, call.heard)
            overlaps = [len(heard & words) / max(1, len(words)) for words in replies]
            assert overlaps.index(max(overlaps)) == i, (names[i], overlaps, heard)

    run_server(settings, agent, fake_twilio, scenario)


# ---------------------------------------------------------------- hand-off that never drops the caller


def call_named(name: str) -> Path:
    return next(c for c in CALLS if c.stem == name)


def heard_words(agent, call: SimulatedCall) -> set[str]:
    return _transcribe_heard(agent, call.heard)


@pytest.mark.parametrize(
    ("rest", "gone"),
    [
        ({"twilio_api_url": "http://127.0.0.1:9"}, False),  # Twilio's API unreachable
        ({"twilio_account_sid": "AC" + "7" * 32}, False),  # credentials Twilio refuses: HTTP 401
        ({}, True),  # Twilio no longer knows the call: HTTP 404
    ],
    ids=["api-down", "http-401", "http-404"],
)
def test_a_transfer_twilio_refuses_keeps_the_caller_and_offers_a_ticket(settings, agent, fake_twilio, rest, gone):
    call_sid = "CA" + secrets.token_hex(16)
    if gone:
        fake_twilio.gone.add(call_sid)

    async def scenario(server: VoiceServer) -> None:
        call = await place_call(server, call_named("human_request"), call_sid=call_sid)
        await until_idle(server)
        record = await asyncio.to_thread(agent.store.get_call, call.call_sid)
        assert not call.closed_by_server, "the caller stays on the line, with the bot"
        assert record["handoff"] is None, "nobody took the call: it was not handed off"
        routes = [(t["route"], t["failed_stage"]) for t in record["turns"]]
        assert routes == [("handoff", None), ("fallback", "transfer")]
        assert record["turns"][1]["reply_text"] == prompts.NO_COLLEAGUE_LINE
        assert {"colleague", "ticket"} <= await asyncio.to_thread(heard_words, agent, call)
        assert await metric(server, 'voicebot_errors_total{kind="call_control"}') == 1
        after = await place_call(server, call_named("faq_returns"))
        await until_idle(server)
        next_record = await asyncio.to_thread(agent.store.get_call, after.call_sid)
        assert [t["route"] for t in next_record["turns"]] == ["faq"], "the next call is served normally"

    run_server(settings, agent, fake_twilio, scenario, **rest)


def test_an_llm_that_fails_mid_call_is_heard_as_an_apology_and_the_next_call_is_served(
    settings, agent, fake_twilio, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("llama_decode returned -1")

    async def scenario(server: VoiceServer) -> None:
        monkeypatch.setattr(agent.dialog.llm, "stream", broken)
        call = await place_call(server, call_named("out_of_scope"))
        await until_idle(server)
        monkeypatch.undo()
        record = await asyncio.to_thread(agent.store.get_call, call.call_sid)
        assert [(t["route"], t["failed_stage"]) for t in record["turns"]] == [("repeat", "llm")]
        assert record["turns"][0]["reply_text"] == agent.line_texts[Line.SORRY]
        assert {"sorry", "wrong", "again"} <= await asyncio.to_thread(heard_words, agent, call)
        assert not call.closed_by_server, "the caller stays on the line"
        after = await place_call(server, call_named("faq_returns"))
        await until_idle(server)
        next_record = await asyncio.to_thread(agent.store.get_call, after.call_sid)
        assert [t["route"] for t in next_record["turns"]] == ["faq"]

    run_server(settings, agent, fake_twilio, scenario)


def test_without_a_human_number_a_request_for_a_person_is_offered_a_ticket(settings, agent, fake_twilio, caplog):
    async def scenario(server: VoiceServer) -> None:
        assert server.no_hand_off and "server.human_number" in server.no_hand_off
        call = await place_call(server, call_named("human_request"))
        await until_idle(server)
        record = await asyncio.to_thread(agent.store.get_call, call.call_sid)
        assert [t["route"] for t in record["turns"]] == ["fallback"] and record["handoff"] is None
        assert record["turns"][0]["reply_text"] == prompts.NO_COLLEAGUE_LINE
        assert fake_twilio.requests == [], "no transfer is tried with nowhere to send the caller"

    with caplog.at_level("WARNING", logger="telephony.server"):
        run_server(settings, agent, fake_twilio, scenario, human_number="")
    assert any("hand-off to a person is off" in r.getMessage() for r in caplog.records)


def test_a_hand_off_nobody_answers_comes_back_to_the_bot(settings, agent, fake_twilio):
    async def scenario(server: VoiceServer) -> None:
        call = await place_call(server, call_named("human_request"))
        await until_idle(server)
        assert (await asyncio.to_thread(agent.store.get_call, call.call_sid))["handoff"] == "requested"
        # Nobody picks up: Twilio asks the <Dial>'s action what next, and the caller is back with the bot.
        back = await place_call(server, call_named("silence_noise"), call_sid=call.call_sid, dial_status="no-answer")
        await until_idle(server)
        record = await asyncio.to_thread(agent.store.get_call, call.call_sid)
        assert record["handoff"] is None and record["ended_at"] is not None
        assert [(t["index"], t["route"], t["failed_stage"]) for t in record["turns"]] == [
            (0, "handoff", None),
            (1, "fallback", "transfer"),
        ]
        assert {"colleague", "ticket"} <= await asyncio.to_thread(heard_words, agent, back)
        assert await metric(server, 'voicebot_errors_total{kind="handoff_unanswered"}') == 1
        # A person answered and the call is over: it ends there.
        form = {**webhook_form(call.call_sid), "DialCallStatus": "completed"}
        status, _, twiml = await http(server, "POST", DIAL_PATH, data=form, headers=signed(PUBLIC + DIAL_PATH, form))
        assert status == 200 and "<Hangup" in twiml
        status, _, _ = await http(server, "POST", DIAL_PATH, data=form, headers=signed(PUBLIC + DIAL_PATH, {}))
        assert status == 403, "the dial report is signed like every webhook"

    run_server(settings, agent, fake_twilio, scenario)


# ---------------------------------------------------------------- the serve command


def test_serve_refuses_an_exposed_server_without_a_token(monkeypatch, capsys):
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    assert "refusing to listen on 0.0.0.0 without TWILIO_AUTH_TOKEN" in capsys.readouterr().err


def test_serve_print_config_masks_secrets(monkeypatch, capsys):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH)
    monkeypatch.setenv("VOICEBOT_MODELS_LLM_API_KEY", "llm-key-0123456789")
    assert cli.main(["serve", "--port", "9090", "--media-port", "9091", "--print-config"]) == 0
    out = capsys.readouterr().out
    settings = json.loads(out)
    server = settings["server"]
    assert (server["port"], server["media_port"]) == (9090, 9091)
    assert AUTH not in out and server["twilio_auth_token"].startswith("***")
    assert "0123456789" not in out and settings["models"]["llm_api_key"].startswith("***")
