"""Signatures (webhook and WebSocket upgrade), one-time stream tokens and the exposure rules, checked against
signatures computed the way Twilio computes them (twilio's own RequestValidator)."""

from __future__ import annotations

import logging

import pytest
from twilio.request_validator import RequestValidator

from telephony.security import PublicUrls, SignatureChecker, StreamTokens, check_exposure
from voicebot.config import ConfigError, ServerSettings

TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC = "https://bot.example.com"
FORM = {"CallSid": "CA" + "1" * 32, "From": "+15550100199", "To": "+15550100000", "CallStatus": "ringing"}


def checker(token: str = TOKEN) -> SignatureChecker:
    return SignatureChecker(token, PublicUrls.from_settings(ServerSettings(public_url=PUBLIC)))


def sign(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


def test_public_urls_follow_the_configured_origin():
    urls = PublicUrls.from_settings(ServerSettings(public_url="https://bot.example.com/"))
    assert urls.stream_url == "wss://bot.example.com/media"
    assert urls.status_url == "https://bot.example.com/stream-status"
    assert urls.webhook_url("/twiml?x=1") == "https://bot.example.com/twiml?x=1"
    prefixed = PublicUrls.from_settings(ServerSettings(public_url="https://example.com/voicebot"))
    assert prefixed.stream_url == "wss://example.com/voicebot/media"
    local = PublicUrls.from_settings(ServerSettings(host="127.0.0.1", port=8080, media_port=8081))
    assert (local.origin, local.stream_url) == ("http://127.0.0.1:8080", "ws://127.0.0.1:8081/media")


def test_a_worker_behind_a_shared_number_has_the_call_come_back_to_its_own_url():
    """Several workers, one number: the webhook may reach any worker, the call's stream, status and dial result
    must reach the one that answered (its token and hand-off state are there)."""
    worker = ServerSettings(public_url=PUBLIC, worker_url="https://bot.example.com/w2/", twilio_auth_token=TOKEN)
    urls = PublicUrls.from_settings(worker)
    assert urls.stream_url == "wss://bot.example.com/w2/media"
    assert urls.status_url == "https://bot.example.com/w2/stream-status"
    assert urls.dial_url == "https://bot.example.com/w2/dial-result"
    check = SignatureChecker(TOKEN, urls)
    assert check.webhook_ok("/twiml", FORM, sign(PUBLIC + "/twiml", FORM))  # the number's webhook
    assert check.webhook_ok("/dial-result", FORM, sign("https://bot.example.com/w2/dial-result", FORM))
    assert not check.webhook_ok("/dial-result", FORM, sign("https://bot.example.com/w1/dial-result", FORM))
    assert check.upgrade_ok(sign("wss://bot.example.com/w2/media", {}))
    assert not check.upgrade_ok(sign("wss://bot.example.com/media", {}))
    with pytest.raises(ConfigError, match=r"server\.worker_url .* must be an https:// URL"):
        PublicUrls.from_settings(ServerSettings(public_url=PUBLIC, worker_url="http://10.0.0.2:8080"))
    with pytest.raises(ConfigError, match=r"server\.worker_url .* server\.public_url is not set"):
        PublicUrls.from_settings(ServerSettings(worker_url="https://bot.example.com/w2"))


@pytest.mark.parametrize("url", ["http://bot.example.com", "bot.example.com", "https://bot.example.com/?a=1"])
def test_a_public_url_twilio_cannot_stream_to_is_refused(url):
    with pytest.raises(ConfigError, match=r"server\.public_url .* must be an https:// URL"):
        PublicUrls.from_settings(ServerSettings(public_url=url))


def test_webhook_signature_valid_invalid_missing():
    check = checker()
    good = sign(PUBLIC + "/twiml", FORM)
    assert check.webhook_ok("/twiml", FORM, good)
    assert not check.webhook_ok("/twiml", {**FORM, "From": "+15550100666"}, good)  # a tampered parameter
    assert not check.webhook_ok("/twiml", FORM, sign(PUBLIC + "/twiml", FORM, token="another-token"))
    assert not check.webhook_ok("/twiml", FORM, None)
    assert not check.webhook_ok("/twiml", FORM, "")


def test_webhook_url_comes_from_the_public_url_not_the_request():
    # Signed for the host a forged Host header would claim: refused, because we rebuild from settings.
    assert not checker().webhook_ok("/twiml", FORM, sign("https://evil.example.net/twiml", FORM))
    # A GET webhook is signed over the full URL with its query string and no parameters.
    assert checker().webhook_ok("/twiml?CallSid=CA1", {}, sign(PUBLIC + "/twiml?CallSid=CA1", {}))


def test_upgrade_signature_is_over_the_wss_url_exactly():
    check = checker()
    assert check.upgrade_ok(sign("wss://bot.example.com/media", {}))
    assert not check.upgrade_ok(sign("https://bot.example.com/media", {}))
    assert not check.upgrade_ok(sign("wss://bot.example.com/media?x=1", {}))
    assert not check.upgrade_ok(None)


def test_without_an_auth_token_checks_are_off():
    check = checker(token="")
    assert not check.enabled
    assert check.webhook_ok("/twiml", FORM, None) and check.upgrade_ok(None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_stream_tokens_are_single_use_and_remember_the_caller():
    tokens = StreamTokens()
    token = tokens.issue("CA1", "+15550100199")
    assert tokens.pending == 1
    assert tokens.redeem("CA1", "wrong") is None
    assert tokens.redeem("CA2", token) is None  # another call's sid
    grant = tokens.redeem("CA1", token)
    assert grant is not None and (grant.call_sid, grant.caller) == ("CA1", "+15550100199")
    assert tokens.redeem("CA1", token) is None  # reuse refused
    assert tokens.pending == 0


def test_stream_tokens_are_random_and_expire():
    clock = Clock()
    tokens = StreamTokens(ttl_s=30, clock=clock)
    first, second = tokens.issue("CA1", None), tokens.issue("CA2", "")
    assert first != second and len(first) >= 32
    clock.now += 31
    assert tokens.pending == 0
    assert tokens.redeem("CA1", first) is None


def test_a_retried_webhook_replaces_the_calls_token():
    tokens = StreamTokens()
    old = tokens.issue("CA1", "+15550100199")
    new = tokens.issue("CA1", "+15550100199")
    assert tokens.pending == 1
    assert tokens.redeem("CA1", old) is None
    assert tokens.redeem("CA1", new) is not None


def test_a_call_that_has_streamed_gets_no_second_token_but_may_come_back_once_from_a_hand_off():
    """A captured signed webhook replayed after the call must not open a second call under its CallSid."""
    tokens = StreamTokens()
    assert tokens.redeem("CA1", tokens.issue("CA1", "+15550100199")) is not None
    assert tokens.streamed("CA1") and tokens.issue("CA1", "+15550100199") is None, "a replayed webhook"
    assert tokens.issue("CA1", None, no_answer=True) is None, "not handed off: no way back in"
    tokens.expect_return("CA1")
    back = tokens.issue("CA1", None, no_answer=True)
    assert back is not None and tokens.redeem("CA1", back).no_answer
    assert tokens.issue("CA1", None, no_answer=True) is None, "the hand-off's report comes back once"


def test_streamed_calls_are_remembered_for_a_bounded_time_and_number():
    clock = Clock()
    tokens = StreamTokens(clock=clock, remember_s=3600, remember=2)
    for sid in ("CA1", "CA2", "CA3"):
        tokens.redeem(sid, tokens.issue(sid, None))
    assert not tokens.streamed("CA1") and tokens.streamed("CA2") and tokens.streamed("CA3")
    clock.now += 3601
    assert not tokens.streamed("CA3"), "forgotten after remember_s (the store still knows the call)"


def test_exposure_rules(caplog):
    with caplog.at_level(logging.WARNING):
        check_exposure(ServerSettings(host="127.0.0.1"))
    assert "signatures are NOT checked" in caplog.text
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without TWILIO_AUTH_TOKEN.*--insecure"):
        check_exposure(ServerSettings(host="0.0.0.0"))
    check_exposure(ServerSettings(host="0.0.0.0", insecure=True))
    check_exposure(ServerSettings(host="0.0.0.0", twilio_auth_token=TOKEN, public_url=PUBLIC))
    with pytest.raises(ConfigError, match=r"server\.public_url is not"):
        check_exposure(ServerSettings(host="0.0.0.0", twilio_auth_token=TOKEN))
    assert TOKEN not in caplog.text
