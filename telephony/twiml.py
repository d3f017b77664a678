"""The TwiML voicebot answers with: connect the call to our media socket, refuse politely, or dial a human.

Built with twilio's `VoiceResponse`, so attribute names and escaping are Twilio's own.
"""

from __future__ import annotations

from twilio.twiml.voice_response import Connect, VoiceResponse


def connect_stream(stream_url: str, status_callback_url: str, token: str) -> str:
    """Bridge the call to the media socket. The one-time `token` travels as a `<Parameter>` (stream URLs
    may not carry query strings) and comes back in the stream's `start.customParameters`.

    Nothing follows `<Connect>`: when the server closes the socket the call ends, unless the server has
    already replaced the call's TwiML (a transfer).
    """
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url, status_callback=status_callback_url, status_callback_method="POST")
    stream.parameter(name="token", value=token)
    response.append(connect)
    return str(response)


def busy_response(company_name: str, human_number: str | None) -> str:
    """The answer when every line is taken: one short sentence, then a person if one is configured.

    `company_name` may be empty (the knowledge base names no company): the thanks is then said without one.
    """
    name = " ".join(company_name.split())
    thanks = f"Thanks for calling {name}." if name else "Thanks for calling."
    response = VoiceResponse()
    if human_number:
        response.say(f"{thanks} All our lines are busy, so let me connect you to a person.")
        response.dial(human_number)
    else:
        response.say(f"{thanks} All our lines are busy right now. Please call again soon.")
        response.hangup()
    return str(response)


DIAL_TIMEOUT_S = 25  # rings before Twilio gives up on the person and asks `action` what to do


def hang_up() -> str:
    """The answer to a hand-off that was answered and is over: the call ends."""
    response = VoiceResponse()
    response.hangup()
    return str(response)


def dial_human(human_number: str, action_url: str, timeout_s: int = DIAL_TIMEOUT_S) -> str:
    """The TwiML a live call is switched to when it is handed to a person. When the dialled call ends or is
    never answered, Twilio asks `action_url` what next: voicebot takes the call back rather than let it drop."""
    response = VoiceResponse()
    response.dial(human_number, action=action_url, method="POST", timeout=timeout_s)
    return str(response)
