"""Who may talk to the server: Twilio request signatures and one-time stream tokens.

Three checks, each refused and counted on failure:
- the voice webhook and the stream status callback carry `X-Twilio-Signature`, an HMAC-SHA1 of the full URL
  Twilio requested plus the sorted POST parameters, keyed with the account's auth token. The URL is rebuilt
  from the configured public URL, never from Host or X-Forwarded-* headers, which a client controls;
- the media WebSocket upgrade carries the same header, computed over the `wss://` URL exactly as written in
  the TwiML and no parameters;
- the TwiML hands Twilio a random one-time token as a `<Parameter>`; the stream's `start` message must bring
  it back (compared in constant time) before any audio is processed. The token also remembers the CallSid
  and the caller's number from the webhook, which the media socket never sees otherwise.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from twilio.request_validator import RequestValidator

from voicebot.config import ConfigError, ServerSettings

log = logging.getLogger(__name__)

MEDIA_PATH = "/media"
TWIML_PATH = "/twiml"
STATUS_PATH = "/stream-status"
DIAL_PATH = "/dial-result"  # Twilio's report on a hand-off's <Dial>: answered, or busy / no answer / failed


@dataclass(frozen=True)
class PublicUrls:
    """The URLs Twilio uses to reach this server; signatures are computed over exactly these.

    `origin` is where the number's voice webhook goes: with several workers behind one proxy, any of them.
    `own` is this worker's own origin (server.worker_url): the media stream, its status callback and the
    hand-off's dial result must come back to the worker that answered the call (its one-time stream token and
    hand-off state live there), so the TwiML names them under `own`. With one worker the two are the same."""

    origin: str  # https://host[/prefix], or the local http://host:port when no public URL is set
    stream_url: str  # wss://host[/prefix]/media, or ws://host:media_port/media locally
    status_url: str
    own: str = ""  # this worker's https origin; empty: `origin`

    @classmethod
    def from_settings(cls, server: ServerSettings) -> PublicUrls:
        if not server.public_url:
            if server.worker_url:
                raise ConfigError(
                    f"server.worker_url is {server.worker_url!r} but server.public_url is not set: the worker's URL "
                    "only means something beside the number's public URL (VOICEBOT_PUBLIC_URL)"
                )
            host = f"[{server.host}]" if ":" in server.host else server.host
            origin = f"http://{host}:{server.port}"
            return cls(origin, f"ws://{host}:{server.media_port}{MEDIA_PATH}", origin + STATUS_PATH)
        origin = _https_origin(server.public_url, "server.public_url")
        own = _https_origin(server.worker_url, "server.worker_url") if server.worker_url else origin
        return cls(origin, "wss://" + own.removeprefix("https://") + MEDIA_PATH, own + STATUS_PATH, own)

    @property
    def dial_url(self) -> str:
        return (self.own or self.origin) + DIAL_PATH

    def webhook_url(self, path_qs: str) -> str:
        """The URL Twilio requested, for a request that reached us at `path_qs` (path plus query string)."""
        return self.origin + path_qs

    def webhook_urls(self, path_qs: str) -> list[str]:
        """The URLs a request reaching us at `path_qs` may have been sent to: the number's, or this worker's own."""
        urls = [self.origin + path_qs]
        if self.own and self.own != self.origin:
            urls.append(self.own + path_qs)
        return urls


def _https_origin(url: str, setting: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"{setting} {url!r} must be an https:// URL with no query, e.g. https://bot.example.com (Twilio reaches "
            "the media socket over wss:// on the same host)"
        )
    return url.rstrip("/")


class SignatureChecker:
    """Verifies `X-Twilio-Signature`. With no auth token configured every check passes (the server then
    listens on loopback only, or where `--insecure` allowed)."""

    def __init__(self, auth_token: str, urls: PublicUrls) -> None:
        self._validator = RequestValidator(auth_token) if auth_token else None
        self.urls = urls

    @property
    def enabled(self) -> bool:
        return self._validator is not None

    def webhook_ok(self, path_qs: str, params: Mapping[str, str], signature: str | None) -> bool:
        """A webhook request: the public URL of `path_qs` (the number's, or this worker's own) plus its POST
        parameters (none for GET)."""
        if self._validator is None:
            return True
        return bool(signature) and any(
            self._validator.validate(url, params, signature) for url in self.urls.webhook_urls(path_qs)
        )

    def upgrade_ok(self, signature: str | None) -> bool:
        """The media WebSocket upgrade: the `wss://` stream URL as the TwiML wrote it, no parameters."""
        if self._validator is None:
            return True
        return bool(signature) and self._validator.validate(self.urls.stream_url, {}, signature)


@dataclass(frozen=True)
class StreamGrant:
    """What the webhook learned about the call, handed to the media socket that redeems its token."""

    call_sid: str
    caller: str | None
    no_answer: bool = False  # the call comes back from a hand-off nobody answered: the bot says so first


class StreamTokens:
    """One-time tokens: issued by the webhook per CallSid, redeemed once by that call's stream `start`,
    forgotten after `ttl_s` (Twilio connects the stream within a second or two of fetching the TwiML).

    A CallSid whose stream has started is remembered (for `remember_s`, at most `remember` of them), and the
    webhook is refused for it from then on: a captured, correctly signed `/twiml` request replayed after the
    call would otherwise open a second call under the victim's CallSid and number. The one way back in is
    the hand-off's `<Dial>` report for a call this server handed off (`expect_return`), once.
    """

    def __init__(
        self,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        remember_s: float = 6 * 3600.0,
        remember: int = 100_000,
    ) -> None:
        self.ttl_s, self.remember_s, self.remember = ttl_s, remember_s, remember
        self._clock = clock
        self._issued: dict[str, tuple[str, StreamGrant, float]] = {}  # call sid -> (token, grant, expiry)
        self._streamed: OrderedDict[str, float] = OrderedDict()  # call sid -> when its stream started
        self._returning: set[str] = set()  # handed off: may come back once through the <Dial> report

    def _expire(self) -> None:
        now = self._clock()
        for call_sid in [sid for sid, (_, _, expiry) in self._issued.items() if expiry <= now]:
            del self._issued[call_sid]
        while self._streamed and (
            len(self._streamed) > self.remember or next(iter(self._streamed.values())) <= now - self.remember_s
        ):
            self._returning.discard(self._streamed.popitem(last=False)[0])

    @property
    def pending(self) -> int:
        """Tokens issued and not yet redeemed or expired: calls on their way to the media socket."""
        self._expire()
        return len(self._issued)

    def streamed(self, call_sid: str) -> bool:
        """Whether a stream of `call_sid` has started (and the webhook may not issue another)."""
        self._expire()
        return call_sid in self._streamed

    def expect_return(self, call_sid: str) -> None:
        """The call was handed to a person: if nobody answers, its `<Dial>` report may bring it back once."""
        self._returning.add(call_sid)

    def issue(self, call_sid: str, caller: str | None, *, no_answer: bool = False) -> str | None:
        """A fresh token for `call_sid` (a retried webhook replaces the earlier one), or None when the call has
        streamed already: a replay. `no_answer`: the call comes back from a hand-off, allowed once."""
        self._expire()
        if no_answer:
            if call_sid not in self._returning:
                return None
            self._returning.discard(call_sid)
        elif call_sid in self._streamed:
            return None
        token = secrets.token_urlsafe(24)
        grant = StreamGrant(call_sid, caller or None, no_answer)
        self._issued[call_sid] = (token, grant, self._clock() + self.ttl_s)
        return token

    def redeem(self, call_sid: str, token: str) -> StreamGrant | None:
        """The grant if `token` is the one issued for `call_sid` and still valid; it can't be used again."""
        self._expire()
        issued = self._issued.get(call_sid)
        if issued is None or not hmac.compare_digest(issued[0].encode(), token.encode()):
            return None
        del self._issued[call_sid]
        self._streamed[call_sid] = self._clock()
        self._streamed.move_to_end(call_sid)
        return issued[1]


def check_exposure(server: ServerSettings) -> None:
    """Refuse settings that would expose an unauthenticated server or that signatures can't be checked with;
    warn when the checks are off on loopback. Run it before loading models, so a mistake fails in a second."""
    PublicUrls.from_settings(server)
    if server.twilio_auth_token and not server.public_url:
        raise ConfigError(
            "TWILIO_AUTH_TOKEN is set but server.public_url is not: signatures are computed over the public URL "
            "Twilio calls, so set VOICEBOT_PUBLIC_URL (e.g. https://bot.example.com)"
        )
    if server.twilio_auth_token:
        return
    try:
        loopback = server.host == "localhost" or ipaddress.ip_address(server.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not server.insecure:
        raise ConfigError(
            f"refusing to listen on {server.host} without TWILIO_AUTH_TOKEN: anyone could place calls and read "
            "the bot's answers. Set TWILIO_AUTH_TOKEN (and VOICEBOT_PUBLIC_URL), listen on 127.0.0.1, or pass "
            "--insecure (server.insecure) if something in front of voicebot authenticates requests"
        )
    log.warning(
        "TWILIO_AUTH_TOKEN is not set: Twilio signatures are NOT checked%s",
        "" if loopback else f" and the server listens on {server.host} (--insecure)",
    )
