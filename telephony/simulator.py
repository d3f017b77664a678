"""A Twilio simulator: places a call to a voicebot server the way Twilio does, and listens like a phone.

It fetches the TwiML from the voice webhook (signed like Twilio when it knows the auth token), connects to
the `<Stream>` URL (signing the upgrade over that URL), sends `connected` and `start` with the token
`<Parameter>`, then streams a recording as 20 ms mu-law frames at real time or `speed` times faster — silence
frames follow the recording, as a real call streams continuously — with `dtmf` presses from the call's
sidecar, and finally `stop`. What comes back is played at the same rate through a model of Twilio's
playback buffer: marks are echoed when playback reaches them, a `clear` drops the audio and returns every
pending mark at once, and what the caller heard can be written to a WAV.

It measures what the server cannot see: the lead of the audio buffered ahead of playback, chunk sizes, and,
for each caller utterance end in the sidecar (`script[].end_ms`, or a DTMF press's `at_ms`), the call time
until the bot's first audio arrived and until its first mark came back (which includes the buffer).
Times are call (media) time: at `speed` 1 they are wall-clock milliseconds.

    python -m telephony.simulator samples/calls/faq_returns.wav --url http://127.0.0.1:8080 --heard heard.wav
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from telephony.protocol import Clear, Mark, Play, TwilioStreamWriter, parse_outbound
from telephony.security import DIAL_PATH
from voicebot.audio import ulaw_decode, ulaw_encode, write_wav_pcm16
from voicebot.playback import PlaybackBuffer
from voicebot.replay import FRAME, FRAME_MS, RATE, phone_audio, sidecar_dtmf

SIGNATURE_HEADER = "X-Twilio-Signature"
SAMPLES_PER_MS = RATE // 1000


class SimulatorError(RuntimeError):
    """The server did not behave like a Twilio endpoint must; the message says what it answered."""


@dataclass(frozen=True)
class Endpoint:
    """How the simulated Twilio reaches the server.

    `url` is where the webhook is POSTed (e.g. http://127.0.0.1:8080). `public_url` is the URL Twilio would
    have called, which the signature covers (the server's `server.public_url`; defaults to `url`).
    `media_url` is where the socket actually connects, standing in for the TLS proxy in front of the server;
    by default the TwiML's `<Stream url>` itself.
    """

    url: str
    public_url: str = ""
    media_url: str = ""
    auth_token: str = ""
    account_sid: str = "AC" + "0" * 32


@dataclass(frozen=True)
class UtteranceLatency:
    end_ms: int  # where the caller stopped (or pressed the key), call time
    first_audio_ms: float | None  # until the bot's first audio frame arrived; None: the bot did not answer
    first_mark_ms: float | None  # until the first mark of that answer came back (played, not cleared)


@dataclass
class SimulatedCall:
    call_sid: str
    twiml: str
    refused: bool = False  # the webhook answered without a <Stream> (busy)
    heard: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # 8 kHz int16
    latencies: list[UtteranceLatency] = field(default_factory=list)
    chunk_ms: list[float] = field(default_factory=list)  # duration of each media message received
    leads_ms: list[float] = field(default_factory=list)  # audio buffered ahead of playback as each chunk arrived
    max_late_ms: float = 0.0  # how far the simulator's own frame clock fell behind (a busy machine)
    marks_echoed: list[str] = field(default_factory=list)  # reached by playback, in order
    marks_cleared: list[str] = field(default_factory=list)  # returned by a clear
    clears: int = 0
    close_code: int | None = None
    close_reason: str = ""
    closed_by_server: bool = False
    mark_echo_wall: list[float] = field(default_factory=list)  # time.time() of each echo, for ordering checks

    def lead_ms(self, quantile: float) -> float:
        """The lead at this quantile of the chunks received (1.0: the most ever buffered ahead)."""
        if not self.leads_ms:
            return 0.0
        ordered = sorted(self.leads_ms)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    def summary(self) -> dict[str, object]:
        """The measurements as plain data (no audio)."""
        data = asdict(self)
        data.pop("heard")
        data["heard_s"] = round(self.heard.size / RATE, 2)
        data["chunk_ms"] = sorted(set(self.chunk_ms))
        data["leads_ms"] = {"p95": self.lead_ms(0.95), "max": self.lead_ms(1.0)}
        return data


def utterance_ends(wav: Path) -> list[tuple[int, int | None]]:
    """`(end_ms, next_start_ms)` per caller utterance or key press in the call's sidecar, in order."""
    sidecar = wav.with_suffix(".json")
    if not sidecar.exists():
        return []
    script = json.loads(sidecar.read_text(encoding="utf-8")).get("script", [])
    steps = sorted((int(s["at_ms"]), int(s.get("end_ms", s["at_ms"]))) for s in script)
    return [(end, steps[i + 1][0] if i + 1 < len(steps) else None) for i, (_, end) in enumerate(steps)]


def _signature(token: str, url: str, params: dict[str, str]) -> dict[str, str]:
    return {SIGNATURE_HEADER: RequestValidator(token).compute_signature(url, params)} if token else {}


async def fetch_twiml(endpoint: Endpoint, call_sid: str, caller: str, dial_status: str | None = None) -> str:
    """POST the voice webhook as Twilio does for an incoming call; the TwiML text. With `dial_status`
    ("no-answer", "busy", "completed"), POST the hand-off's `<Dial action>` instead, as Twilio does when the
    dialled person's call ends or never starts."""
    params = {
        "CallSid": call_sid,
        "AccountSid": endpoint.account_sid,
        "From": caller,
        "To": "+15550100000",
        "CallStatus": "ringing" if dial_status is None else "in-progress",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
    path = "/twiml" if dial_status is None else DIAL_PATH
    if dial_status is not None:
        params["DialCallStatus"] = dial_status
    public = (endpoint.public_url or endpoint.url).rstrip("/") + path
    headers = _signature(endpoint.auth_token, public, params)
    async with (
        aiohttp.ClientSession() as http,
        http.post(endpoint.url.rstrip("/") + path, data=params, headers=headers) as response,
    ):
        text = await response.text()
        if response.status != 200:
            raise SimulatorError(f"the webhook {public} answered HTTP {response.status}: {text[:200]}")
        return text


def stream_target(twiml: str) -> tuple[str, dict[str, str]] | None:
    """The `<Stream url>` and its `<Parameter>`s, or None when the TwiML does not connect a stream."""
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    if stream is None:
        return None
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return stream.get("url", ""), params


class _Phone:
    """The caller's side of one connected stream: sends frames on a clock, plays and measures what arrives."""

    def __init__(self, ws: ClientConnection, writer: TwilioStreamWriter, result: SimulatedCall, speed: float) -> None:
        self.ws, self.writer, self.result, self.speed = ws, writer, result, speed
        self.buffer = PlaybackBuffer()
        self.media_ms = -FRAME_MS  # call time at which the frame being played began
        self.tick_wall = time.monotonic()
        self.frame_audio_ms = 0.0  # bot audio in the frame being played
        self.last_audio_ms = -1e9  # call time the last bot audio arrived
        self.reply_starts: list[float] = []  # call times at which audio arrived while the bot was silent
        self.echoes: list[tuple[int, str]] = []
        self.heard: list[np.ndarray] = []

    def now_ms(self) -> float:
        """Call time now: the frame being played and how far playback is past its start. A phone plays in
        real time, so when this thread is late to its next tick (a busy machine) the clock runs on."""
        return self.media_ms + (time.monotonic() - self.tick_wall) * 1000 * self.speed

    def _unplayed_ms(self) -> float:
        """Bot audio received but not yet heard, played continuously from the frame in progress; what a late
        tick has not yet taken from the buffer counts as heard, as it would be on a real phone. Otherwise a
        stalled simulator thread would charge the server's pacing with audio the caller had already heard."""
        into_frame = self.now_ms() - self.media_ms
        overdue = max(0.0, into_frame - FRAME_MS)
        pending = max(0.0, self.buffer.pending_samples / SAMPLES_PER_MS - overdue)
        return pending + max(0.0, self.frame_audio_ms - into_frame)

    async def receive(self) -> None:
        """Until the socket closes: play what arrives; a message Twilio would refuse raises ProtocolError."""
        with contextlib.suppress(ConnectionClosed):
            await self._receive()

    async def _receive(self) -> None:
        async for message in self.ws:
            event = parse_outbound(message, self.writer.stream_sid)
            if isinstance(event, Play):
                pcm = ulaw_decode(event.payload)
                if self._unplayed_ms() == 0:
                    self.reply_starts.append(round(self.now_ms(), 1))
                self.buffer.add_audio(pcm)
                self.result.chunk_ms.append(pcm.size / SAMPLES_PER_MS)
                self.result.leads_ms.append(round(self._unplayed_ms(), 1))
                self.last_audio_ms = self.now_ms()
            elif isinstance(event, Mark):
                self.buffer.add_mark(event.name)
            elif isinstance(event, Clear):
                self.result.clears += 1
                returned = self.buffer.clear()
                self.frame_audio_ms = 0.0
                self.result.marks_cleared += returned
                for name in returned:  # Twilio echoes every pending mark at once
                    await self.ws.send(self.writer.mark(name))

    async def tick(self, captured: bytes) -> None:
        """At call time T: play [T, T+20), echo the marks playback reached, and send the caller's audio of
        [T-20, T) stamped T-20 (Twilio can only send what it has captured; nothing at T=0)."""
        self.media_ms += FRAME_MS
        self.tick_wall = time.monotonic()
        before = self.buffer.pending_samples
        played, marks = self.buffer.play(FRAME)
        self.frame_audio_ms = (before - self.buffer.pending_samples) / SAMPLES_PER_MS
        for name in marks:
            self.echoes.append((self.media_ms, name))
            self.result.marks_echoed.append(name)
            self.result.mark_echo_wall.append(time.time())
            await self.ws.send(self.writer.mark(name))
        if self.media_ms > 0:
            await self.ws.send(self.writer.media(captured, self.media_ms - FRAME_MS))
        self.heard.append(played)

    @property
    def idle(self) -> bool:
        return self._unplayed_ms() == 0

    def latencies(self, ends: list[tuple[int, int | None]]) -> list[UtteranceLatency]:
        out = []
        for end, next_start in ends:
            start = next((t for t in self.reply_starts if t >= end and (next_start is None or t < next_start)), None)
            mark = None if start is None else next((t for t, _ in self.echoes if t >= start), None)
            out.append(
                UtteranceLatency(
                    end,
                    None if start is None else round(start - end, 1),
                    None if mark is None else round(mark - end, 1),
                )
            )
        return out


async def simulate_call(
    endpoint: Endpoint,
    wav: Path,
    *,
    speed: float = 1.0,
    caller: str = "+15550100199",
    call_sid: str | None = None,
    heard_wav: Path | None = None,
    hang_up_at_ms: int | None = None,
    send_stop: bool = True,
    quiet_ms: int = 1500,
    max_tail_ms: int = 30_000,
    dial_status: str | None = None,
) -> SimulatedCall:
    """Place one call with the recording `wav` as the caller's voice.

    After the recording the caller stays on the line (silence frames) until the bot has been quiet for
    `quiet_ms` (at most `max_tail_ms`), then hangs up with `stop`; the server may end the call first.
    `hang_up_at_ms` hangs up earlier, at that call time; with `send_stop=False` the connection just drops.
    `dial_status` places the call's return from a hand-off that ended that way (see `fetch_twiml`).
    """
    if speed <= 0:
        raise ValueError(f"speed must be above 0 (1 is real time), got {speed}")
    call_sid = call_sid or "CA" + secrets.token_hex(16)
    twiml = await fetch_twiml(endpoint, call_sid, caller, dial_status)
    result = SimulatedCall(call_sid, twiml)
    target = stream_target(twiml)
    if target is None:
        result.refused = True
        return result
    stream_url, params = target
    audio = ulaw_encode(phone_audio(wav))
    presses = sidecar_dtmf(wav)
    headers = _signature(endpoint.auth_token, stream_url, {})
    async with connect(endpoint.media_url or stream_url, additional_headers=headers, compression=None) as ws:
        writer = TwilioStreamWriter("MZ" + secrets.token_hex(16), call_sid, endpoint.account_sid)
        phone = _Phone(ws, writer, result, speed)
        await ws.send(writer.connected())
        await ws.send(writer.start(params))
        receiving = asyncio.create_task(phone.receive())
        frames = -(-len(audio) // FRAME)
        started = time.monotonic()
        caller_left = False
        try:
            for i in range(frames + 1 + max_tail_ms // FRAME_MS):
                wait = started + i * FRAME_MS / 1000 / speed - time.monotonic()
                await asyncio.sleep(max(0.0, wait))
                result.max_late_ms = max(result.max_late_ms, round(-wait * 1000 * speed, 1))
                if receiving.done():
                    break  # the server closed the stream
                if hang_up_at_ms is not None and phone.media_ms >= hang_up_at_ms:
                    break
                if i > frames and phone.idle and phone.media_ms - phone.last_audio_ms >= quiet_ms:
                    break
                await phone.tick(audio[max(0, i - 1) * FRAME : i * FRAME].ljust(FRAME, b"\xff"))
                while presses and presses[0][0] <= phone.media_ms:
                    await ws.send(writer.dtmf(presses.pop(0)[1]))
            if not receiving.done():
                caller_left = True
                if send_stop:
                    await ws.send(writer.stop())
                    await ws.close()
                else:
                    ws.transport.abort()  # the line drops: no stop, no close handshake
        except ConnectionClosed:
            pass  # the server closed while we were sending
        finally:
            receiving.cancel()
        if receiving.done() and not receiving.cancelled() and receiving.exception() is not None:
            raise receiving.exception()  # the server broke the protocol (ProtocolError)
        result.closed_by_server = not caller_left
        result.close_code, result.close_reason = ws.close_code, ws.close_reason or ""
    result.heard = np.concatenate(phone.heard) if phone.heard else np.zeros(0, np.int16)
    result.latencies = phone.latencies(utterance_ends(wav))
    if heard_wav is not None:
        write_wav_pcm16(heard_wav, result.heard, RATE)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m telephony.simulator",
        description="Call a voicebot server like Twilio does, with a recorded call as the caller's voice.",
    )
    parser.add_argument("wav", type=Path, help="the caller's recording (any WAV; a sidecar CALL.json adds DTMF)")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the server's HTTP address")
    parser.add_argument("--public-url", default="", help="the server's server.public_url, if set")
    parser.add_argument("--media-url", default="", help="connect the stream here instead of the TwiML's URL")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="1 is real time (default), 2 twice as fast (a server closes a stream more than "
        "server.max_media_ahead_s ahead of real time: raise that setting for fast calls)",
    )
    parser.add_argument("--heard", type=Path, help="write what the caller heard to this WAV")
    args = parser.parse_args(argv)
    endpoint = Endpoint(args.url, args.public_url, args.media_url, os.environ.get("TWILIO_AUTH_TOKEN", ""))
    call = asyncio.run(simulate_call(endpoint, args.wav, speed=args.speed, heard_wav=args.heard))
    print(json.dumps(call.summary(), indent=2))
    firsts = [x.first_audio_ms for x in call.latencies if x.first_audio_ms is not None]
    if firsts:
        print(f"first audio after the caller stopped: median {statistics.median(firsts):.0f} ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
