"""The dialog brain: from what the caller said to what the bot says next, and the record of it.

`DialogEngine` holds what every call shares (embedder, FAQ index, intent examples, LLMs, the company, the
recorder); `Conversation` is one call. A caller turn costs one embedding of the caller's words, one FAISS search
and one dot product with the intent examples; `voicebot.routing.decide` weighs them and picks the route, so a
knowledge-base answer never waits for the LLM. Only statements that nothing recognised go to the LLM classifier,
and only answers the KB doesn't hold word for word go to the LLM writer (`voicebot.reply_writer`).

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
from typing import Protocol

import numpy as np

from voicebot import prompts
from voicebot.calibration import load_calibrated_index
from voicebot.config import Settings
from voicebot.embedder import Embedder, load_embedder
from voicebot.intents import (
    IntentClassifier,
    IntentExamples,
    IntentMatcher,
    load_intent_examples,
    read_cues,
)
from voicebot.kb import Company, load_knowledge_base
from voicebot.llm import ChatModel, Message, load_llm
from voicebot.reply_writer import ReplyWriter, Written
from voicebot.retrieval import FaqIndex
from voicebot.routes import CallAction, DialogState, HandoffReason, Offer, ReplyKind, Route, Stage
from voicebot.routing import Context, Decision, Turn, decide
from voicebot.store import Ticket, TurnRecord, speak_ticket_id

log = logging.getLogger(__name__)

# Two complaints in one call are the same issue when their words are this close (cosine of MiniLM embeddings:
# "the boiler is broken" / "I want my money back for the boiler" 0.61), or this close in the same category
# ("my parcel arrived damaged" / "the box was smashed when it came" 0.53). Unrelated problems measured 0.12-0.25
# ("my parcel arrived damaged" / "you charged me twice on my card"), 0.54 across categories ("my order never
# arrived" / "I was charged twice for my order").
SAME_ISSUE_SIMILARITY = 0.6
SAME_CATEGORY_SIMILARITY = 0.4
# A summary is the caller's own words; a turn this short ("it's broken") or one that only asks for a ticket
# ("yes, open a ticket") borrows the caller's turn before, where the issue was described.
SHORT_TURN_WORDS = 3
MESSAGE_OVERHEAD = 5  # chat-template tokens around each message (<|im_start|>role\n ... <|im_end|>\n)
FILLERS = re.compile(r"\b(?:um+|uh+|er+|erm|you know|like I said)\b[,]?\s*", re.IGNORECASE)


class Recorder(Protocol):
    """What the dialog needs of the store: the call's record and its tickets (`voicebot.store.Store` is one)."""

    def start_call(self, call_id: str, caller: str | None, channel: str) -> int: ...

    def record_turn(self, call_id: str, turn: TurnRecord) -> None: ...

    def record_greeting(self, call_id: str, spoken_text: str, interrupted: bool, latency_ms: dict) -> None: ...

    def end_call(self, call_id: str, handoff_reason: str | None = None) -> None: ...

    def create_ticket(self, call_id: str, caller: str | None, category: str, summary: str) -> Ticket: ...

    def withdraw_ticket(self, ticket_id: str) -> None: ...


@dataclass
class Reply:
    """One bot utterance, streamed. `route`, `faq_id`, `llm_first_token_ms` and `spoken` are final once
    `sentences` is exhausted (a refused LLM reply becomes a fallback, or the best entry read as written)."""

    kind: ReplyKind
    route: Route
    state: DialogState
    sentences: Iterator[str]
    caller_text: str = ""
    faq_id: str | None = None  # FAQ: the entry read; LLM: the entry it is grounded on
    action: CallAction | None = None
    reason: HandoffReason | None = None
    ticket_id: str | None = None
    opened_ticket: bool = False  # this reply opened `ticket_id` (rather than naming one the call already has)
    score: float | None = None  # the best KB match's cosine similarity, when retrieval ran
    decision: Decision | None = None  # why this route (caller turns only)
    route_ms: float | None = None
    classify_ms: float | None = None
    llm_message: str | None = None  # the user message the LLM got (facts and caller's words)
    written: Written | None = None  # the LLM writer's account, for LLM replies
    spoken: list[str] = field(default_factory=list)  # every sentence handed out so far

    @property
    def llm_first_token_ms(self) -> float | None:
        return None if self.written is None else self.written.first_token_ms

    @property
    def low_confidence(self) -> bool:
        return self.decision is not None and self.decision.low_confidence

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
    """What every call of the process shares: models, knowledge base, company, recorder. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        index: FaqIndex,
        llm: ChatModel,
        classifier: IntentClassifier,
        recorder: Recorder,
        *,
        company: Company | None = None,
        intents: IntentExamples | None = None,
    ) -> None:
        self.settings = settings
        self.dialog = settings.dialog
        self.embedder = embedder
        self.index = index
        self.llm = llm
        self.classifier = classifier
        self.store = recorder
        self.company = prompts.company_profile(company or Company(), self.dialog)
        self.intents = IntentMatcher(
            embedder, intents or load_intent_examples(self.dialog.intents_path), self.company.ticket_categories
        )
        self.writer = ReplyWriter(llm, self.dialog, self.company.name)
        self.entries = {entry.id: entry for entry in index.entries}
        self.reply_prefix = prompts.reply_prefix(self.company, self.dialog.tone)
        self.reply_prefix_tokens = sum(llm.token_count(m.content) + MESSAGE_OVERHEAD for m in self.reply_prefix)

    @classmethod
    def load(cls, settings: Settings, *, kb_path: Path, store: Recorder, progress: bool = False) -> DialogEngine:
        """Load the embedder and both LLM contexts, and build (or load) the knowledge base's index."""
        kb = load_knowledge_base(kb_path)
        embedder = load_embedder(settings.models)
        index = load_calibrated_index(settings, kb_path, embedder, progress=progress)
        llm = load_llm(settings.models, settings.dialog)
        classifier = IntentClassifier.beside(llm)
        return cls(settings, embedder, index, llm, classifier, store, company=kb.company)

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
        return prompts.fixed_lines(self.company)

    def conversation(
        self, call_id: str, caller: str | None, channel: str, *, can_hand_off: bool = True
    ) -> Conversation:
        """Open the call's record and its conversation."""
        recorded = self.store.start_call(call_id, caller, channel)
        return Conversation(self, call_id, caller, channel, can_hand_off=can_hand_off, first_turn=recorded)


@dataclass
class _Exchange:
    """One turn as the LLM sees it in later prompts."""

    caller: str
    bot: str  # what the caller heard
    # The user message exactly as the LLM got it (facts included). Kept byte-identical in later prompts, the
    # whole turn stays in llama.cpp's cached prefix: the next turn evaluates only its own new tokens.
    message: str


class Conversation:
    """One call: its history, topic, state, failed-turn and frustration counts, and the tickets it opened."""

    def __init__(
        self,
        engine: DialogEngine,
        call_id: str,
        caller: str | None,
        channel: str,
        *,
        can_hand_off: bool = True,
        first_turn: int = 0,
    ) -> None:
        """`first_turn`: turns the call's record already has (a call back from a hand-off nobody answered)."""
        self.engine = engine
        self.can_hand_off = can_hand_off  # a person can take the call over (else a ticket is offered instead)
        self.call_id = call_id
        self.caller = caller
        self.channel = channel
        self.history: list[_Exchange] = []
        self.state = DialogState.CONSULTING
        self.topic: str | None = None  # the KB entry the conversation is about, for follow-ups
        self.failed_turns = 0  # low-confidence or fallback turns in a row
        self.misheard_turns = 0  # turns in a row the bot asked to hear again
        self.frustration = 0
        self.tickets: list[tuple[Ticket, np.ndarray]] = []  # with the embedding of the words that opened it
        self.handoff_reason: HandoffReason | None = None
        self.offer: Offer | None = None  # what the bot's last words offered to do, for "yes please"
        self._turns = first_turn
        self._last_reply = ""
        self._ended = False

    # ------------------------------------------------------------ what the bot says unprompted

    def greeting(self) -> Reply:
        return self._fixed(ReplyKind.GREETING, Route.GREETING, prompts.greeting(self.engine.company))

    def prompt(self, text: str) -> Reply:
        """A fixed line the voice layer asks for (e.g. "Sorry, go ahead." after a cough cut the bot off)."""
        return self._fixed(ReplyKind.PROMPT, Route.PROMPT, text, state=self.state)

    def respond_dtmf(self, meaning: str) -> Reply:
        """A key the caller pressed, by meaning: "human" transfers the call, "repeat" says the last reply again."""
        pressed = f"[keypad: {meaning}]"
        if meaning == "human":
            return self._transfer(ReplyKind.DTMF, Route.DTMF, HandoffReason.DTMF, pressed)
        if meaning == "repeat":
            line = self._last_reply or prompts.greeting(self.engine.company)
            return self._fixed(ReplyKind.DTMF, Route.DTMF, line, state=self.state, caller_text=pressed)
        raise ValueError(f"DTMF meaning {meaning!r} is not known; use human or repeat in voice.dtmf_map")

    # ------------------------------------------------------------ a caller turn

    def decide(
        self, text: str, vector: np.ndarray | None = None, *, misheard: bool = False
    ) -> tuple[Decision, Turn, float | None]:
        """Route the caller's words: the decision, what it was based on, and the LLM classifier's ms (if asked)."""
        engine, dialog = self.engine, self.engine.dialog
        cues = read_cues(text)
        if vector is None:
            vector = engine.embedder.encode([text])[0]
        hits = engine.index.rank(vector[np.newaxis, :], dialog.top_k)[0]
        topic_hits = []
        if cues.follow_up and self.topic is not None:
            topic = engine.entries.get(self.topic)
            if topic is not None:
                topic_hits = engine.index.search(f"{topic.question} {text}", k=dialog.top_k)
        turn = Turn(
            text=text,
            cues=cues,
            hits=hits,
            intents=engine.intents.match(vector),
            thresholds=engine.index.thresholds,
            intent_thresholds=engine.intents.thresholds,
            context=Context(self.topic, self.failed_turns, self.frustration, self.misheard_turns, self.offer),
            topic_hits=topic_hits,
            category=engine.intents.category(vector),
            facts_margin=dialog.facts_margin,
            misheard=misheard,
        )
        decision = decide(turn)
        classify_ms = None
        if decision.needs_label:
            label = engine.classifier.classify(text)
            classify_ms = label.ms
            decision = decide(turn, label.kind)
        return decision, turn, classify_ms

    def respond(
        self, caller_text: str, *, cancelled: Callable[[], bool] | None = None, misheard: bool = False
    ) -> Reply:
        """Route the caller's words and start the reply. Nothing is recorded until `commit`. `misheard`: the STT
        was unsure of the words, so they are answered from the KB or not at all, never acted on."""
        start = time.perf_counter()
        text = " ".join(caller_text.split())
        if not text:
            return self._fixed(ReplyKind.TURN, Route.REPEAT, prompts.NOT_HEARD_LINE, state=self.state)
        vector = self.engine.embedder.encode([text])[0]
        decision, turn, classify_ms = self.decide(text, vector, misheard=misheard)
        if decision.frustrated:
            self.frustration += 1
        route_ms = (time.perf_counter() - start) * 1000 - (classify_ms or 0.0)
        score = turn.hits[0].score if turn.hits else 0.0
        log.debug("call %s: %s (%s)", self.call_id, decision.route, decision.why)
        match decision.route:
            case Route.HANDOFF:
                assert decision.reason is not None
                reply = self._transfer(ReplyKind.TURN, Route.HANDOFF, decision.reason, text)
            case Route.HANGUP:
                reply = self._fixed(
                    ReplyKind.TURN,
                    Route.HANGUP,
                    prompts.farewell(self.engine.company),
                    state=DialogState.CLOSING,
                    caller_text=text,
                    action=CallAction.HANGUP,
                )
            case Route.TICKET:
                reply = self._ticket(text, decision.category or "complaint", vector)
            case Route.FALLBACK:  # nothing answers this twice running: decline, and offer a ticket or a colleague
                reply = self._fixed(ReplyKind.TURN, Route.FALLBACK, prompts.FALLBACK_LINE, caller_text=text)
            case Route.FAQ:
                entry = self.engine.entries[decision.entry_id or ""]
                reply = self._fixed(ReplyKind.TURN, Route.FAQ, entry.answer, state=decision.state, caller_text=text)
                reply.faq_id = entry.id
            case Route.REPEAT:
                if decision.which_offer:
                    line = prompts.WHICH_OFFER_LINE
                elif decision.misheard and self.misheard_turns:
                    line = prompts.NOT_HEARD_AGAIN_LINE
                else:
                    line = prompts.NOT_HEARD_LINE
                reply = self._fixed(ReplyKind.TURN, Route.REPEAT, line, state=self.state, caller_text=text)
            case _:
                reply = self._llm(text, decision, cancelled or (lambda: False))
        reply.decision, reply.score, reply.route_ms, reply.classify_ms = decision, score, route_ms, classify_ms
        return reply

    def withdraw(self, reply: Reply) -> None:
        """Undo what `reply` did when it was decided, none of which the caller heard: the caller was still
        talking, and the whole turn is answered instead. A ticket it opened is removed, its frustration count
        taken back."""
        reply.cancel()
        if reply.decision is not None and reply.decision.frustrated:
            self.frustration = max(0, self.frustration - 1)
        if reply.opened_ticket:
            self.tickets = [(ticket, words) for ticket, words in self.tickets if ticket.id != reply.ticket_id]
            self.engine.store.withdraw_ticket(reply.ticket_id or "")

    def commit(
        self, reply: Reply, spoken_text: str, *, interrupted: bool, latency_ms: dict[str, float | None] | None = None
    ) -> None:
        """Record `reply` as the caller heard it: `spoken_text` is cut short after a barge-in.

        The history the LLM sees next turn holds what was said, not what was generated, so the bot never
        refers back to words the caller did not hear.
        """
        reply.cancel()
        latency = {**reply.timings(), **(latency_ms or {})}
        if reply.kind is ReplyKind.GREETING:
            self.engine.store.record_greeting(self.call_id, spoken_text, interrupted, latency)
            return
        if reply.kind is ReplyKind.PROMPT:
            return
        self.offer = prompts.offer_in(spoken_text)
        self._last_reply = spoken_text or self._last_reply
        self.state = reply.state
        if reply.action is CallAction.TRANSFER:  # recorded when said, not when decided: a barge-in may cancel it
            self.handoff_reason = reply.reason
        if reply.kind is ReplyKind.TURN:
            failed = reply.low_confidence or reply.route is Route.FALLBACK
            self.failed_turns = self.failed_turns + 1 if failed else 0
            misheard = reply.decision is not None and reply.decision.misheard
            self.misheard_turns = self.misheard_turns + 1 if misheard else 0
            if reply.route in (Route.FAQ, Route.LLM) and reply.faq_id is not None:
                self.topic = reply.faq_id
            message = reply.llm_message or prompts.caller_message(reply.caller_text)
            self.history.append(_Exchange(reply.caller_text, spoken_text, message))
            limit = max(1, self.engine.dialog.history_turns)
            if len(self.history) > limit:
                self._trim_history(max(1, limit // 2))
        self._save_turn(reply.caller_text, reply.route, reply.faq_id, spoken_text, interrupted, latency)

    def record_line(self, route: Route, caller_text: str, spoken_text: str, failed_stage: Stage | None) -> None:
        """Record a turn the voice layer answered with a fixed line: a failure (the caller heard an apology; it
        counts towards the hand-off for turns nothing answered) or the goodbye to a silent caller."""
        if failed_stage is Stage.TRANSFER:
            self.handoff_reason = None  # nobody took the call: it was not handed off
        elif failed_stage is not None:
            self.failed_turns += 1
        if failed_stage is not None:
            self.state = DialogState.CONSULTING
        self.offer = prompts.offer_in(spoken_text)
        self._save_turn(caller_text, route, None, spoken_text, False, {}, failed_stage)

    def record_progress(self, reply: Reply, spoken_text: str) -> None:
        """Record `reply` as far as the caller has heard it, under the number its turn will have (`commit`
        replaces it), marked interrupted until then: after a crash the record shows what was said."""
        self._save_turn(reply.caller_text, reply.route, reply.faq_id, spoken_text, True, reply.timings(), final=False)

    def _save_turn(
        self,
        caller_text: str,
        route: Route,
        faq_id: str | None,
        spoken_text: str,
        interrupted: bool,
        latency: dict[str, float | None],
        failed_stage: Stage | None = None,
        *,
        final: bool = True,
    ) -> None:
        """The turn's record, numbered after the call's last (a reopened call goes on counting); `final` False
        keeps the number for the turn's final record."""
        record = TurnRecord(
            self._turns, caller_text, route, faq_id, spoken_text, interrupted, self.state, latency, failed_stage
        )
        if final:
            self._turns += 1
        self.engine.store.record_turn(self.call_id, record)

    def forget_unheard(self, reply: Reply, spoken_text: str) -> None:
        """`reply` failed: withdraw the ticket it opened if the caller never heard its id (they are asked to say
        it again, and a ticket nobody was told of would be a second one)."""
        if reply.opened_ticket and speak_ticket_id(reply.ticket_id or "") not in spoken_text:
            self.withdraw(reply)
            reply.opened_ticket = False  # withdrawn: asking again changes nothing

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
        kind: ReplyKind,
        route: Route,
        text: str,
        *,
        state: DialogState = DialogState.CONSULTING,
        caller_text: str = "",
        action: CallAction | None = None,
        reason: HandoffReason | None = None,
    ) -> Reply:
        reply = Reply(kind, route, state, iter(()), caller_text=caller_text, action=action, reason=reason)
        reply.sentences = _handing_out(reply, prompts.split_sentences(text))
        return reply

    def _transfer(self, kind: ReplyKind, route: Route, reason: HandoffReason, caller_text: str) -> Reply:
        """The hand-off line; the call is transferred once it has been played. Where nobody can take the call,
        the caller hears so, and is offered a ticket (recorded as the decline-and-offer `fallback`)."""
        if not self.can_hand_off:
            return self._fixed(kind, Route.FALLBACK, prompts.NO_COLLEAGUE_LINE, caller_text=caller_text)
        line = prompts.HANDOFF_LINES[reason]
        return self._fixed(
            kind,
            route,
            line,
            state=DialogState.HANDOFF,
            caller_text=caller_text,
            action=CallAction.TRANSFER,
            reason=reason,
        )

    def _ticket(self, text: str, category: str, vector: np.ndarray) -> Reply:
        """Open a ticket for a new issue, or name the one this call already opened for the same issue. A turn
        that only asks for the ticket ("yes please", "open a ticket") is about the issue told the turn before."""
        if self._borrows_issue(text):
            vector = self.engine.embedder.encode([f"{self.history[-1].caller} {text}"])[0]
            category = self.engine.intents.category(vector)

        def same_issue(ticket: Ticket, words: np.ndarray) -> bool:
            similarity = float(words @ vector)
            return similarity >= SAME_ISSUE_SIMILARITY or (
                ticket.category == category and similarity >= SAME_CATEGORY_SIMILARITY
            )

        existing = next((ticket for ticket, words in self.tickets if same_issue(ticket, words)), None)
        if existing is not None:
            ticket, line = existing, prompts.ticket_exists(speak_ticket_id(existing.id))
        else:
            ticket = self.engine.store.create_ticket(self.call_id, self.caller, category, self._summary(text))
            self.tickets.append((ticket, vector))
            line = prompts.ticket_opened(category, speak_ticket_id(ticket.id))
        reply = self._fixed(ReplyKind.TURN, Route.TICKET, line, state=DialogState.COMPLAINT, caller_text=text)
        reply.ticket_id, reply.opened_ticket = ticket.id, existing is None
        return reply

    def _summary(self, text: str) -> str:
        """The ticket's summary: the caller's own words, cleaned, with the turn before when this one is short."""
        words = [text]
        if self._borrows_issue(text):
            words.insert(0, self.history[-1].caller)
        summary = " / ".join(FILLERS.sub("", part).strip(" ,") for part in words)
        summary = summary[:1].upper() + summary[1:]
        return summary if len(summary) <= 300 else summary[:299] + "…"

    def _borrows_issue(self, text: str) -> bool:
        """Too short to name an issue, or only asks for a ticket: the caller's turn before tells it."""
        cues = read_cues(text)
        return bool(self.history) and (len(text.split()) <= SHORT_TURN_WORDS or cues.ticket_request or cues.accepts)

    def _llm(self, text: str, decision: Decision, cancelled: Callable[[], bool]) -> Reply:
        """The LLM's reply from the decision's facts (none: it may only decline, greet or ask back)."""
        facts = list(decision.facts)
        reply = Reply(ReplyKind.TURN, Route.LLM, decision.state, iter(()), caller_text=text, faq_id=decision.entry_id)
        reply.llm_message = prompts.caller_message(text, [hit.entry.answer for hit in facts])
        reply.written = Written()
        sentences = self.engine.writer.write(
            self._messages(reply.llm_message),
            facts,
            text,
            read_threshold=self.engine.index.thresholds.faq,
            written=reply.written,
            cancelled=cancelled,
            # The first turn in a row nothing answers is asked to rephrase; the next is offered a way out.
            decline_line=prompts.REPHRASE_LINE if self.failed_turns == 0 else prompts.FALLBACK_LINE,
        )
        reply.sentences = _following(reply, sentences)
        return reply

    # ------------------------------------------------------------ the LLM's view of the call

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


def _handing_out(reply: Reply, sentences: list[str]) -> Iterator[str]:
    for sentence in sentences:
        reply.spoken.append(sentence)
        yield sentence


def _following(reply: Reply, sentences: Iterator[str]) -> Iterator[str]:
    """Hand out the writer's sentences, keeping `reply.route`/`faq_id` in step with what it decided."""
    assert reply.written is not None
    try:
        for sentence in sentences:
            if reply.written.route is not Route.LLM:
                reply.route = reply.written.route
                reply.faq_id = reply.written.fell_back_to
            reply.spoken.append(sentence)
            yield sentence
    finally:
        close = getattr(sentences, "close", None)
        if close is not None:
            close()
