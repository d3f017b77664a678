"""The words every layer shares about a turn: its route, the reply's kind, the dialog state, the call action.

Session, dialog, store, metrics and the CLI pass these enums, never strings renamed on the way. They are
`StrEnum`s, so their values are what call records, `/metrics` labels and users' scripts read, unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class Route(StrEnum):
    """How a turn was answered. The values are what call records, `/metrics` labels and users' scripts read."""

    FAQ = "faq"  # the KB answer, read as written
    LLM = "llm"  # the LLM, grounded on KB entries (or declining without them)
    TICKET = "ticket"
    HANDOFF = "handoff"
    HANGUP = "hangup"
    FALLBACK = "fallback"  # the LLM's reply was refused by the grounding check: the fixed decline line
    DTMF = "dtmf"
    REPEAT = "repeat"  # nothing usable was heard, or a stage failed (the turn's `failed_stage`): say it again
    NO_INPUT = "no_input"  # the caller stayed silent through a re-prompt: the bot said goodbye
    GREETING = "greeting"  # not a caller turn: the bot's opening line
    PROMPT = "prompt"  # not a caller turn: a fixed line the voice layer asked for


class ReplyKind(StrEnum):
    """What a reply answers: the call's start, a caller turn, a key press, or the voice layer's own need."""

    GREETING = "greeting"
    TURN = "turn"
    DTMF = "dtmf"
    PROMPT = "prompt"


class DialogState(StrEnum):
    CONSULTING = "consulting"  # questions about the business
    TRANSACTION = "transaction"  # about changing, booking or cancelling something of the caller's
    COMPLAINT = "complaint"
    HANDOFF = "handoff"
    CLOSING = "closing"


class Offer(StrEnum):
    """What the bot's last words offered to do, so that "yes please" does it and "no" lets it go."""

    TICKET = "ticket"
    HANDOFF = "handoff"
    EITHER = "either"  # a ticket or a colleague: a plain "yes" is asked which


class CallAction(StrEnum):
    """What the call does once the reply's last sentence has been played."""

    TRANSFER = "transfer"
    HANGUP = "hangup"


class HandoffReason(StrEnum):
    REQUESTED = "requested"
    FAILED_TURNS = "failed_turns"
    FRUSTRATION = "frustration"
    DTMF = "dtmf"


class Stage(StrEnum):
    """The part of a turn's work that failed or ran out of time, as recorded with the turn."""

    STT = "stt"
    ROUTE = "route"  # the routing decision: embedding, search, the intent classifier
    LLM = "llm"
    TTS = "tts"
    STORE = "store"  # the database: recording, or opening a ticket
    TRANSFER = "transfer"  # the hand-off to a person: the REST call failed, or nobody answered


class Line(StrEnum):
    """Lines the bot must be able to say when everything else fails: synthesized at start-up, played from
    memory, never through a job. Their words are `voicebot.prompts.line_texts`."""

    HELLO = "hello"  # the greeting, when the greeting itself could not be made
    SORRY = "sorry"  # a turn's work failed: apologise and ask again
    NOT_HEARD = "not_heard"  # the transcription failed: ask again
    ONE_MOMENT = "one_moment"  # the answer is slow: bridge the silence
    STILL_THERE = "still_there"  # the caller has said nothing for a while
    NO_INPUT_BYE = "no_input_bye"  # still nothing: end the call
    NO_COLLEAGUE = "no_colleague"  # a hand-off could not be made: say so and offer a ticket
    TIME_LIMIT_BYE = "time_limit_bye"  # the call reached its maximum length
