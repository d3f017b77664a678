"""Changing a live call through Twilio's REST API: hand it to a person, or hang it up.

Both go through twilio's own `Client` (`calls(sid).update(...)`), which blocks, so each request runs in a
thread of its own small pool: never on the event loop, and never queued behind the calls' STT and LLM work. The
API origin can be pointed elsewhere (`server.twilio_api_url`), which is how the tests put
the real client in front of a local fake of the Calls endpoint.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from telephony.twiml import dial_human
from voicebot.config import ServerSettings

log = logging.getLogger(__name__)

REST_THREADS = 2  # transfers and hang-ups are rare and short; a slow API must not take more threads than this


class CallControlError(RuntimeError):
    """A call could not be changed; the message says which call, what Twilio answered and what to fix."""


class CallControl:
    def __init__(self, account_sid: str, auth_token: str, api_url: str = "", timeout_s: float = 10.0) -> None:
        self._client: Client | None = None
        self._pool = ThreadPoolExecutor(REST_THREADS, thread_name_prefix="twilio-rest")
        if account_sid and auth_token:
            self._client = Client(account_sid, auth_token, http_client=TwilioHttpClient(timeout=timeout_s))
            if api_url:
                self._client.api.base_url = api_url.rstrip("/")

    @classmethod
    def from_settings(cls, server: ServerSettings) -> CallControl:
        return cls(server.twilio_account_sid, server.twilio_auth_token, server.twilio_api_url)

    def cannot_transfer(self, human_number: str) -> str | None:
        """Why no call can be handed to a person with this configuration, or None when it can."""
        if not human_number:
            return (
                "server.human_number is not set (set VOICEBOT_SERVER_HUMAN_NUMBER to the number that takes over, "
                "e.g. +15550100)"
            )
        if self._client is None:
            return "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set, so voicebot may not use Twilio's REST API"
        return None

    async def transfer(self, call_sid: str, human_number: str, action_url: str) -> None:
        """Replace the call's TwiML with a `<Dial>` to `human_number`; Twilio then stops our stream, and asks
        `action_url` what to do once the person hangs up or never answers."""
        if reason := self.cannot_transfer(human_number):
            raise CallControlError(f"cannot transfer call {call_sid}: {reason}")
        if not await self._run(self._update, call_sid, "transfer", twiml=dial_human(human_number, action_url)):
            raise CallControlError(f"cannot transfer call {call_sid}: Twilio no longer knows the call (HTTP 404)")

    async def hangup(self, call_sid: str) -> None:
        """End the call (`status=completed`); a call that is already gone is fine."""
        await self._run(self._update, call_sid, "hang up", status="completed")

    async def _run(self, update: Callable[..., bool], call_sid: str, what: str, **changes: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(update, call_sid, what, **changes)
        )

    def close(self) -> None:
        """Stop the request threads (requests in flight finish on their own)."""
        self._pool.shutdown(wait=False)

    def _update(self, call_sid: str, what: str, **changes: str) -> bool:
        """Change the call; False when Twilio no longer knows it (the caller hung up first)."""
        if self._client is None:
            raise CallControlError(
                f"cannot {what} call {call_sid}: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN so voicebot may use "
                "Twilio's REST API"
            )
        try:
            self._client.calls(call_sid).update(**changes)
        except TwilioRestException as exc:
            if exc.status == 404:  # the caller hung up first: nothing left to change
                log.info("call %s was already gone when asked to %s", call_sid, what)
                return False
            raise CallControlError(
                f"cannot {what} call {call_sid}: Twilio answered HTTP {exc.status} "
                f"(error {exc.code}): {exc.msg}; check the account SID, auth token and the call's state"
            ) from exc
        except OSError as exc:  # requests' connection errors and timeouts are OSErrors
            raise CallControlError(
                f"cannot {what} call {call_sid}: Twilio's API did not answer ({type(exc).__name__}: {exc}); "
                "check the network, or server.twilio_api_url if set"
            ) from exc
        log.info("call %s: %s done", call_sid, what)
        return True
