"""The LLM's spoken reply and the guards that keep it from inventing what the knowledge base doesn't say.

The reply streams: tokens become speakable sentences (`prompts.SentenceCutter`) and each sentence is checked
before the caller can hear it:
- grounded on KB facts: `grounding.Grounds.check` refuses numbers, names and yes/no claims the facts and the
  caller's words don't hold, on every sentence (an echo of the caller's question, "Yes, we sell car tyres.",
  is a yes/no claim the facts never make);
- without facts: `grounding.check_ungrounded` lets it decline, offer a ticket or a colleague, greet or ask back.
A refused first sentence is replaced: by the closest KB answer when that entry is close enough to read as is
(`Thresholds.faq` less `REFUSED_READ_MARGIN`), else by the fixed decline-and-offer line; so is a first sentence
that declines although such an entry is there. A refused later sentence just ends the reply there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from voicebot import grounding, prompts
from voicebot.config import DialogSettings
from voicebot.llm import ChatModel, Message
from voicebot.retrieval import Hit
from voicebot.routes import Route

log = logging.getLogger(__name__)

MAX_SENTENCES = 2
# A refused (or declining) reply falls back to reading the best entry's answer when its score reaches the read-as-
# written threshold less this margin: the caller most likely asked about that entry and the 0.5B model failed to
# say it faithfully. Measured over the six test KBs (271 lines): 0.1 gave 77.8/88.9/85.1/86.7% on bank, clinic,
# hotel and ISP, 0.0 gave 75.6/82.2/80.9/84.4%; the cost is a near-miss read now and then ("do you do mortgages"
# gets the personal-loan answer).
REFUSED_READ_MARGIN = 0.1


@dataclass
class Written:
    """What the writer did, filled in as the sentences stream: final once they are exhausted."""

    route: Route = Route.LLM
    first_token_ms: float | None = None
    refused: list[tuple[str, str]] = field(default_factory=list)  # (sentence, why) that the caller never heard
    fell_back_to: str | None = None  # the KB entry read as written instead of a refused reply (route FAQ)


class ReplyWriter:
    """Streams the LLM's reply for one turn as checked, speakable sentences. Shared by all calls."""

    def __init__(self, llm: ChatModel, dialog: DialogSettings, company_name: str) -> None:
        self.llm = llm
        self.dialog = dialog
        self.known = (company_name,) if company_name else ()  # the bot may always name its own company

    def write(
        self,
        messages: Sequence[Message],
        facts: Sequence[Hit],
        caller_text: str,
        *,
        read_threshold: float,
        written: Written,
        cancelled: Callable[[], bool],
        decline_line: str = prompts.FALLBACK_LINE,
    ) -> Iterator[str]:
        """The reply to `messages` (whose last message carries `facts` and the caller's words), at most two
        sentences, each checked; stops early when `cancelled()` turns true (a barge-in). `decline_line` is said
        when the reply is refused and no entry is close enough to read instead."""
        start = time.perf_counter()
        tokens = self.llm.stream(messages, max_tokens=self.dialog.llm_max_tokens, temperature=0.2)
        texts = [hit.entry.answer for hit in facts]
        grounds = grounding.Grounds(texts, caller_text, known=self.known) if texts else None
        cutter = prompts.SentenceCutter()
        said: list[str] = []

        def chunks() -> Iterator[str]:
            for token in tokens:
                if written.first_token_ms is None:
                    written.first_token_ms = (time.perf_counter() - start) * 1000
                if cancelled():
                    return
                yield from cutter.feed(token)
            yield from cutter.flush()

        try:
            for chunk in chunks():
                why = self._refusal(chunk, grounds)
                if why is None and not said and self._readable(facts, read_threshold) and grounding.is_decline(chunk):
                    why = "declined although the best entry is close enough to read"
                if why is not None:
                    written.refused.append((chunk, why))
                    # The sentence, and why (which quotes its words), are LLM text: DEBUG only.
                    log.info("dropped an LLM sentence the grounding check refused")
                    log.debug("dropped LLM sentence (%s): %r", why, chunk)
                    if not said:
                        yield from self._instead(facts, read_threshold, written, decline_line)
                    return
                said.append(chunk)
                yield chunk
                if sum(s.endswith((".", "!", "?")) for s in said) >= MAX_SENTENCES or cancelled():
                    return
            if not said and not cancelled():
                yield from self._instead(facts, read_threshold, written, decline_line)
        finally:
            tokens.close()

    def _refusal(self, sentence: str, grounds: grounding.Grounds | None) -> str | None:
        """Why `sentence` may not be said, or None when it may."""
        if grounds is None:
            verdict = grounding.check_ungrounded(sentence, known=self.known)
            return None if verdict.ok else f"{verdict.reason}: {verdict.detail}"
        verdict = grounds.check(sentence)
        return None if verdict.ok else f"{verdict.reason}: {verdict.detail}"

    @staticmethod
    def _readable(facts: Sequence[Hit], read_threshold: float) -> bool:
        """The best entry is close enough to be read as written in place of a refused or declining reply."""
        return bool(facts) and facts[0].score >= read_threshold - REFUSED_READ_MARGIN

    def _instead(
        self, facts: Sequence[Hit], read_threshold: float, written: Written, decline_line: str
    ) -> Iterator[str]:
        """What is said when the LLM's reply was refused: the best entry as written if it is close, else
        `decline_line`."""
        if self._readable(facts, read_threshold):
            written.route, written.fell_back_to = Route.FAQ, facts[0].entry.id
            yield from prompts.split_sentences(facts[0].entry.answer)
            return
        written.route = Route.FALLBACK
        yield from prompts.split_sentences(decline_line)
