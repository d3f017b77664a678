"""The dialog brain: from what the caller said to what the bot says next, and the record of it.

`DialogEngine` holds what every call shares (embedder, FAQ index, LLMs, store); `Conversation` is one call.
A caller turn is routed cheapest first, so a knowledge-base answer never waits for the LLM:

1. keywords (`voicebot.intents.detect`): a request for a human, a complaint stated as such, a goodbye;
2. retrieval: at or above `dialog.faq_threshold` the KB answer is read out word for word;
3. only then the LLM: a one-word intent label for statements the keywords missed ("two payments came out of
   my account"), then a reply grounded on the top KB entries (score at or above `grounded_threshold`) or,
   below that, a reply that may only decline and offer a ticket or a colleague.

A reply streams (`Reply.sentences`): the voice starts on the first sentence while the LLM writes the second,
and stops generating when the caller barges in. What the caller actually heard comes back through
`Conversation.commit`, which updates the history the LLM sees and records the turn.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voicebot import prompts
from voicebot.config import Settings
from voicebot.embedder import Embedder, load_embedder
from voicebot.intents import (
    IntentClassifier,
    Kind,
    asks_something,
    detect,
    is_frustrated,
    is_small_talk,
    is_ticket_request,
    is_transaction,
    ticket_category,
)
from voicebot.llm import LlamaChat, Message, load_llm
from voicebot.retrieval import FaqIndex, Hit
from voicebot.store import Store, Ticket, TurnRecord, speak_ticket_id

log = logging.getLogger(__name__)

# Two complaints in one call are the same issue when they share a category or their words are this close
# (cosine of MiniLM embeddings): "the kettle is broken" then "I want my money back for the kettle".
SAME_ISSUE_SIMILARITY = 0.6
# A summary is the caller's own words; a turn this short ("it's broken") or one that only asks for a ticket
# ("yes, open a ticket") borrows the caller's turn before, where the issue was described.
SHORT_TURN_WORDS = 3
MESSAGE_OVERHEAD = 5  # chat-template tokens around each message (<|im_start|>role\n ... <|im_end|>\n)
FILLERS = re.compile(r"\b(?:um+|uh+|er+|erm|you know|like I said)\b[,]?\s*", re.IGNORECASE)


@dataclass
class Reply:
    """One bot utterance, streamed. `route`, `llm_first_token_ms` and `spoken` are final once `sentences` is done.

    `kind` is "turn" (an answer to the caller), "greeting", "prompt" (a fixed line such as "sorry, go ahead")
    or "dtmf". `action` is what the call does after the last sentence has been played: "transfer" (with
    `reason`) or "hangup".
    """

    kind: str
    route: str
    state: str
    sentences: Iterator[str]
    caller_text: str = ""
    faq_id: str | None = None
    action: str | None = None
    reason: str | None = None
    ticket_id: str | None = None
    score: float | None = None  # the best KB match's cosine similarity, when retrieval ran
    low_confidence: bool = False  # nothing in the KB and no intent: counts towards a hand-off
    route_ms: float | None = None
    classify_ms: float | None = None
    llm_first_token_ms: float | None = None
    llm_message: str | None = None  # the user message the LLM got (facts and caller's words)
    spoken: list[str] = field(default_factory=list)  # every sentence handed out so far

    def cancel(self) -> None:
        """Stop producing sentences (the caller barged in); an LLM generation stops at its next token."""
        close = getattr(self.sentences, "close", None)
        if close is not None:
            # ValueError: a worker thread is iterating it right now; it checks `cancelled` and stops itself.
            with contextlib.suppress(ValueError):
                close()

    def timings(self) -> dict[str, float | None]:
        """The dialog's stage latencies, as recorded with the turn."""
        return {
            "route": _ms(self.route_ms),
            "classify": _ms(self.classify_ms),
            "llm_first_token": _ms(self.llm_first_token_ms),
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class DialogEngine:
    """What every call of the process shares: models, knowledge base, store. Thread-safe for many calls."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        index: FaqIndex,
        llm: LlamaChat,
        classifier: IntentClassifier,
        store: Store,
    ) -> None:
        self.settings = settings
        self.dialog = settings.dialog
        self.embedder = embedder
        self.index = index
        self.llm = llm
        self.classifier = classifier
        self.store = store
        self.reply_prefix = prompts.reply_prefix(self.dialog)
        self.reply_prefix_tokens = sum(llm.token_count(m.content) + MESSAGE_OVERHEAD for m in self.reply_prefix)

    @classmethod
    def load(cls, settings: Settings, *, kb_path: Path, store: Store, progress: bool = False) -> DialogEngine:
        """Load the embedder and both LLM contexts, and build (or load) the knowledge base's index."""
        embedder = load_embedder(settings.models)
        index = FaqIndex.build_or_load(
            kb_path, embedder, progress=progress, fallback_dir=settings.models.dir / "kb-index"
        )
        llm = load_llm(settings.models, settings.dialog)
        return cls(settings, embedder, index, llm, IntentClassifier.beside(llm, settings.models), store)

    def warm_up(self) -> float:
        """Put the static prompts' KV state in both LLM contexts, so the first caller doesn't pay for it.

        Returns the milliseconds it took (about 2-3 s on 2 cores: the reply prefix is ~300 tokens).
        """
        start = time.perf_counter()
        self.index.search("hello", k=1)
        self.llm.complete([*self.reply_prefix, Message("user", prompts.caller_message("hello"))], max_tokens=1)
        self.classifier.warm_up()
        return (time.perf_counter() - start) * 1000

    def fixed_prompts(self) -> list[str]:
        """Sentences said word for word (greeting, farewell, hand-off lines), to synthesize ahead of time."""
        return prompts.fixed_lines(self.dialog)

    def conversation(self, call_id: str, caller: str | None, channel: str) -> Conversation:
        """Open the call's record and its conversation."""
        self.store.start_call(call_id, caller, channel)
        return Conversation(self, call_id, caller, channel)


@dataclass
class _Exchange:
    """One turn as the LLM sees it in later prompts."""

    caller: str
    bot: str  # what the caller heard
    # The user message exactly as the LLM got it (facts included). Kept byte-identical in later prompts, the
    # whole turn stays in llama.cpp's cached prefix: the next turn evaluates only its own new tokens.
    message: str


class Conversation:
    """One call: its history, state, failed-turn and frustration counts, and the tickets it opened."""

    def __init__(self, engine: DialogEngine, call_id: str, caller: str | None, channel: str) -> None:
        self.engine = engine
        self.call_id = call_id
        self.caller = caller
        self.channel = channel
        self.history: list[_Exchange] = []
        self.state = "consulting"
        self.failed_turns = 0  # low-confidence or fallback turns in a row
        self.frustration = 0
        self.tickets: list[tuple[Ticket, np.ndarray]] = []  # with the embedding of the words that opened it
        self.handoff_reason: str | None = None
        self._turns = 0
        self._last_reply = ""
        self._ended = False

    # ------------------------------------------------------------ what the bot says unprompted

    def greeting(self) -> Reply:
        return self._fixed("greeting", "consulting", prompts.greeting(self.engine.dialog), route="greeting")

    def prompt(self, text: str) -> Reply:
        """A fixed line the voice layer asks for (e.g. "Sorry, go ahead." after a cough cut the bot off)."""
        return self._fixed("prompt", self.state, text, route="prompt")

    def respond_dtmf(self, meaning: str) -> Reply:
        """A key the caller pressed, by meaning: "human" transfers the call, "repeat" says the last reply again."""
        pressed = f"[keypad: {meaning}]"
        if meaning == "human":
            line = prompts.HANDOFF_LINES["dtmf"]
            return self._fixed("dtmf", "handoff", line, "dtmf", caller_text=pressed, action="transfer", reason="dtmf")
        if meaning == "repeat":
            line = self._last_reply or prompts.greeting(self.engine.dialog)
            return self._fixed("dtmf", self.state, line, "dtmf", caller_text=pressed)
        raise ValueError(f"DTMF meaning {meaning!r} is not known; use human or repeat in voice.dtmf_map")

    # ------------------------------------------------------------ a caller turn

    def respond(self, caller_text: str, *, cancelled: Callable[[], bool] | None = None) -> Reply:
        """Route the caller's words and start the reply. Nothing is recorded until `commit`."""
        start = time.perf_counter()
        text = " ".join(caller_text.split())
        if not text:
            return self._fixed("turn", self.state, prompts.NOT_HEARD_LINE, route="fallback")
        if is_frustrated(text):
            self.frustration += 1
            if self.frustration >= 2:
                return self._handoff(text, "frustration", start)
        intent = detect(text)
        if intent is not None and intent.kind is Kind.HUMAN:
            return self._handoff(text, "requested", start)
        if intent is not None and intent.kind is Kind.BYE:
            return self._hangup(text, start)
        asks = asks_something(text)
        if intent is not None and not asks:
            return self._ticket(text, intent.category or "complaint", start)
        dialog = self.engine.dialog
        hits = self.engine.index.search(text, k=dialog.top_k)
        score = hits[0].score if hits else 0.0
        route_ms = (time.perf_counter() - start) * 1000
        if intent is not None and score < dialog.grounded_threshold:
            # "can you repair my laptop" and the KB knows nothing about it: a ticket is the useful answer.
            return self._ticket(text, intent.category or "complaint", start)
        if score >= dialog.faq_threshold:
            return self._faq(text, hits[0], score, route_ms)
        classify_ms = None
        if intent is None and not asks and not is_small_talk(text):
            label = self.engine.classifier.classify(text)
            classify_ms = label.ms
            if label.kind is Kind.TICKET:
                return self._ticket(text, ticket_category(text), start, classify_ms=classify_ms)
            if label.kind is Kind.HUMAN and score < dialog.grounded_threshold:
                # The small model hears "in person" in "can I grab it in person at a branch" as a request for
                # one; a transfer costs a colleague's time, so it must not be about anything the KB covers.
                return self._handoff(text, "requested", start, classify_ms=classify_ms)
            if label.kind is Kind.BYE:
                return self._hangup(text, start, classify_ms=classify_ms)
        floor = max(dialog.grounded_threshold, score - dialog.facts_margin)
        grounded = [hit for hit in hits if hit.score >= floor]
        low_confidence = not grounded and not is_small_talk(text)
        if low_confidence and self.failed_turns >= 1:
            return self._handoff(text, "failed_turns", start, classify_ms=classify_ms)
        reply = Reply(
            "turn",
            "llm",
            _answer_state(text),
            iter(()),
            caller_text=text,
            score=score,
            low_confidence=low_confidence,
            route_ms=route_ms,
            classify_ms=classify_ms,
        )
        reply.sentences = self._generate(reply, [hit.entry.answer for hit in grounded], cancelled or (lambda: False))
        return reply

    def commit(
        self, reply: Reply, spoken_text: str, *, interrupted: bool, latency_ms: dict[str, float | None] | None = None
    ) -> None:
        """Record `reply` as the caller heard it: `spoken_text` is cut short after a barge-in.

        The history the LLM sees next turn holds what was said, not what was generated, so the bot never
        refers back to words the caller did not hear.
        """
        reply.cancel()
        latency = {**reply.timings(), **(latency_ms or {})}
        if reply.kind == "greeting":
            self.engine.store.record_greeting(self.call_id, spoken_text, interrupted, latency)
            return
        if reply.kind == "prompt":
            return
        self._last_reply = spoken_text or self._last_reply
        self.state = reply.state
        if reply.action == "transfer":  # recorded when said, not when decided: a barge-in may have cancelled it
            self.handoff_reason = reply.reason
        if reply.kind == "turn":
            failed = reply.low_confidence or reply.route == "fallback"
            self.failed_turns = self.failed_turns + 1 if failed else 0
            message = reply.llm_message or prompts.caller_message(reply.caller_text)
            self.history.append(_Exchange(reply.caller_text, spoken_text, message))
            limit = max(1, self.engine.dialog.history_turns)
            if len(self.history) > limit:
                self._trim_history(max(1, limit // 2))
        record = TurnRecord(
            index=self._turns,
            caller_text=reply.caller_text,
            route=reply.route,
            faq_id=reply.faq_id,
            reply_text=spoken_text,
            interrupted=interrupted,
            state=reply.state,
            latency_ms=latency,
        )
        self._turns += 1
        self.engine.store.record_turn(self.call_id, record)

    def prefill(self) -> float:
        """Evaluate the history into the LLM's KV cache now, so the next LLM reply evaluates only its own words.

        Call it in a worker thread after `commit`, while the reply plays: turns answered from the KB, tickets
        and the last reply would otherwise be evaluated (~5 ms a token) after the caller's next question.
        Returns the milliseconds spent; the LLM is locked meanwhile, so a turn that needs it waits, but never
        longer than it would have spent evaluating the same history itself.
        """
        start = time.perf_counter()
        if self.history:
            self.engine.llm.complete(self._messages(None), max_tokens=1)
        return (time.perf_counter() - start) * 1000

    def end(self) -> None:
        """Close the call's record (with the hand-off reason, if the call was transferred). Idempotent."""
        if not self._ended:
            self._ended = True
            self.engine.store.end_call(self.call_id, self.handoff_reason)

    # ------------------------------------------------------------ routes

    def _fixed(
        self,
        kind: str,
        state: str,
        text: str,
        route: str,
        *,
        caller_text: str = "",
        action: str | None = None,
        reason: str | None = None,
        route_ms: float | None = None,
        classify_ms: float | None = None,
    ) -> Reply:
        reply = Reply(
            kind,
            route,
            state,
            iter(()),
            caller_text=caller_text,
            action=action,
            reason=reason,
            route_ms=route_ms,
            classify_ms=classify_ms,
        )
        reply.sentences = _handing_out(reply, prompts.split_sentences(text))
        return reply

    def _faq(self, text: str, hit: Hit, score: float, route_ms: float) -> Reply:
        """The KB answer as written, a sentence at a time: the voice has them synthesized already."""
        reply = Reply(
            "turn",
            "faq",
            _answer_state(text),
            iter(()),
            caller_text=text,
            faq_id=hit.entry.id,
            score=score,
            route_ms=route_ms,
        )
        reply.sentences = _handing_out(reply, prompts.split_sentences(hit.entry.answer))
        return reply

    def _handoff(self, text: str, reason: str, start: float, *, classify_ms: float | None = None) -> Reply:
        return self._fixed(
            "turn",
            "handoff",
            prompts.HANDOFF_LINES[reason],
            "handoff",
            caller_text=text,
            action="transfer",
            reason=reason,
            route_ms=_since(start, classify_ms),
            classify_ms=classify_ms,
        )

    def _hangup(self, text: str, start: float, *, classify_ms: float | None = None) -> Reply:
        return self._fixed(
            "turn",
            "closing",
            prompts.farewell(self.engine.dialog),
            "hangup",
            caller_text=text,
            action="hangup",
            route_ms=_since(start, classify_ms),
            classify_ms=classify_ms,
        )

    def _ticket(self, text: str, category: str, start: float, *, classify_ms: float | None = None) -> Reply:
        """Open a ticket for a new issue, or name the one this call already opened for the same issue."""
        vector = self.engine.embedder.encode([text])[0]
        existing = next(
            (
                ticket
                for ticket, words in self.tickets
                if ticket.category == category or float(words @ vector) >= SAME_ISSUE_SIMILARITY
            ),
            None,
        )
        if existing is not None:
            ticket, line = existing, prompts.ticket_exists(speak_ticket_id(existing.id))
        else:
            ticket = self.engine.store.create_ticket(self.call_id, self.caller, category, self._summary(text))
            self.tickets.append((ticket, vector))
            line = prompts.ticket_opened(category, speak_ticket_id(ticket.id))
        reply = self._fixed(
            "turn",
            "complaint",
            line,
            "ticket",
            caller_text=text,
            route_ms=_since(start, classify_ms),
            classify_ms=classify_ms,
        )
        reply.ticket_id = ticket.id
        return reply

    def _summary(self, text: str) -> str:
        """The ticket's summary: the caller's own words, cleaned, with the turn before when this one is short."""
        words = [text]
        if (len(text.split()) <= SHORT_TURN_WORDS or is_ticket_request(text)) and self.history:
            words.insert(0, self.history[-1].caller)
        summary = " / ".join(FILLERS.sub("", part).strip(" ,") for part in words)
        summary = summary[:1].upper() + summary[1:]
        return summary if len(summary) <= 300 else summary[:299] + "…"

    # ------------------------------------------------------------ the LLM reply

    def _supported(self, sentence: str, facts: list[str]) -> bool:
        """The reply's first sentence is about its facts, not an echo of the caller's question (~10 ms)."""
        vectors = self.engine.embedder.encode([sentence, *facts])
        return float(np.max(vectors[1:] @ vectors[0])) >= self.engine.dialog.reply_support

    def _trim_history(self, keep: int) -> None:
        """Keep the last `keep` turns, without their facts.

        The window drops half its turns at once rather than one per turn: any change at the start of the
        history means re-evaluating all of it, so that cost is paid every `keep` turns instead of every turn.
        The kept turns lose their facts then too, which bounds the prompt well inside the context.
        """
        del self.history[: len(self.history) - keep]
        for exchange in self.history:
            exchange.message = prompts.caller_message(exchange.caller)

    def _messages(self, message: str | None) -> list[Message]:
        """Static prefix, then history, then this turn: the order that keeps llama.cpp's prefix cache warm."""
        dialog, llm = self.engine.dialog, self.engine.llm
        budget = dialog.llm_context - dialog.llm_max_tokens - self.engine.reply_prefix_tokens
        needed = 0 if message is None else llm.token_count(message) + MESSAGE_OVERHEAD
        turns = [llm.token_count(e.message) + llm.token_count(e.bot) + 2 * MESSAGE_OVERHEAD for e in self.history]
        while self.history and needed + sum(turns) > budget:  # a long call with long facts: make room
            self._trim_history(len(self.history) - 1)
            turns = turns[1:]
        messages = list(self.engine.reply_prefix)
        for exchange in self.history:
            messages += [Message("user", exchange.message), Message("assistant", exchange.bot)]
        if message is not None:
            messages.append(Message("user", message))
        return messages

    def _generate(self, reply: Reply, facts: list[str], cancelled: Callable[[], bool]) -> Iterator[str]:
        """Stream the LLM's reply as speakable sentences, at most two, each checked against invented facts.

        A sentence that fails the check is not said, nor anything after it; if it was the first, the fixed
        fallback line (sorry, a ticket or a colleague) is said instead and the route becomes "fallback".
        """
        dialog = self.engine.dialog
        sources = " ".join([*facts, reply.caller_text])
        start = time.perf_counter()
        reply.llm_message = prompts.caller_message(reply.caller_text, facts)
        tokens = self.engine.llm.stream(
            self._messages(reply.llm_message), max_tokens=dialog.llm_max_tokens, temperature=0.2
        )
        cutter = prompts.SentenceCutter()

        def chunks() -> Iterator[str]:
            for token in tokens:
                if reply.llm_first_token_ms is None:
                    reply.llm_first_token_ms = (time.perf_counter() - start) * 1000
                if cancelled():
                    return
                yield from cutter.feed(token)
            yield from cutter.flush()

        sentences = 0
        try:
            for chunk in chunks():
                if facts:
                    ok = prompts.grounded_sentence_ok(chunk, sources) and (
                        reply.spoken or self._supported(chunk, facts)
                    )
                else:
                    ok = prompts.ungrounded_sentence_ok(chunk)
                if not ok:
                    # Said nothing yet: the fallback line. Said something: stop there, it was fine so far.
                    log.info("call %s: dropped an unsupported LLM sentence: %r", self.call_id, chunk)
                    if not reply.spoken:
                        reply.route = "fallback"
                        yield from _handing_out(reply, prompts.split_sentences(prompts.FALLBACK_LINE))
                    return
                reply.spoken.append(chunk)
                yield chunk
                sentences += chunk.endswith((".", "!", "?"))
                if sentences >= 2 or cancelled():
                    return
            if not reply.spoken and not cancelled():
                reply.route = "fallback"
                yield from _handing_out(reply, prompts.split_sentences(prompts.FALLBACK_LINE))
        finally:
            tokens.close()


def _answer_state(text: str) -> str:
    """The dialog state of a question the bot answers: about doing something with an order, or not."""
    return "transaction" if is_transaction(text) else "consulting"


def _handing_out(reply: Reply, sentences: list[str]) -> Iterator[str]:
    for sentence in sentences:
        reply.spoken.append(sentence)
        yield sentence


def _since(start: float, classify_ms: float | None) -> float:
    """Routing time, not counting the LLM classification (reported on its own)."""
    return (time.perf_counter() - start) * 1000 - (classify_ms or 0.0)
