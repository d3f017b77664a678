"""The loaded voice agent: every model a call needs, loaded and warmed once per process, shared by all calls.

Warm means: the Whisper encoder has run once, the LLM has the static system prompt in its KV cache, and the
greeting, fixed prompts and every knowledge-base answer are already synthesized at phone rate — so the
first caller gets the same latency as the hundredth. The lines for when everything else fails (`Line`) are
synthesized even without warming: a call must be able to apologise without the TTS.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from voicebot.config import Settings
from voicebot.dialog import Conversation, DialogEngine
from voicebot.prompts import line_texts
from voicebot.record_writer import RecordWriter
from voicebot.session import CallSession, SessionOptions
from voicebot.stt import WhisperTranscriber, load_transcriber
from voicebot.tts import load_synthesizer
from voicebot.tts_cache import PhoneSpeech
from voicebot.vad import SileroVad, VadOptions, load_vad
from voicebot.vocabulary import kb_vocabulary

log = logging.getLogger(__name__)


def parse_dtmf_map(text: str) -> dict[str, str]:
    """`"0=human,9=repeat"` → `{"0": "human", "9": "repeat"}`; the setting is `voice.dtmf_map`."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        digit, sep, meaning = item.partition("=")
        digit, meaning = digit.strip(), meaning.strip()
        if not sep or digit not in set("0123456789*#") or len(digit) != 1 or not meaning:
            raise ValueError(f"voice.dtmf_map entry {item!r} must look like DIGIT=meaning, e.g. 0=human")
        mapping[digit] = meaning
    return mapping


class VoiceAgent:
    """Models shared by every call of the process, and the factory for each call's session."""

    def __init__(
        self,
        settings: Settings,
        dialog: DialogEngine,
        transcriber: WhisperTranscriber,
        speech: PhoneSpeech,
        vad: SileroVad,
        records: RecordWriter,
    ) -> None:
        """`records` is the dialog's recorder, in front of the store (`records.store`, for reading back)."""
        self.settings, self.dialog, self.transcriber, self.speech, self.vad = (
            settings,
            dialog,
            transcriber,
            speech,
            vad,
        )
        self.records, self.store = records, records.store
        voice = settings.voice
        self.session_options = SessionOptions(
            barge_in_ms=voice.barge_in_ms,
            barge_in_guard_ms=voice.barge_in_guard_ms,
            hold_ms=voice.barge_in_hold_ms,
            backchannel_max_ms=voice.backchannel_max_ms,
            question_end_ms=voice.vad_question_end_ms,
            end_ms=voice.vad_end_ms,
            unfinished_end_ms=voice.vad_unfinished_end_ms,
            continuation_ms=voice.continuation_ms,
            dtmf_map=parse_dtmf_map(voice.dtmf_map),
            filler_after_ms=voice.filler_after_ms,
            stt_deadline_ms=voice.stt_deadline_ms,
            reply_deadline_ms=voice.reply_deadline_ms,
            reply_stall_ms=voice.reply_stall_ms,
            no_input_ms=voice.no_input_ms,
            max_call_ms=voice.max_call_s * 1000,
        )
        self.vad_options = VadOptions.from_voice(voice)
        # What the bot says when all else fails, made now: a call never needs the TTS to apologise.
        self.line_texts = line_texts(dialog.company)
        self.lines = {line: speech.sentence(text)[0] for line, text in self.line_texts.items()}

    @classmethod
    def load(cls, settings: Settings, dialog: DialogEngine, records: RecordWriter) -> VoiceAgent:
        """Load STT, TTS and VAD next to an already built dialog engine."""
        vocabulary = kb_vocabulary(dialog.index.entries, dialog.company.name) if settings.voice.stt_vocabulary else None
        return cls(
            settings,
            dialog,
            load_transcriber(settings.models, settings.voice, vocabulary=vocabulary),
            PhoneSpeech(load_synthesizer(settings.models)),
            load_vad(settings.models),
            records,
        )

    @classmethod
    def sharing(cls, agent: VoiceAgent, settings: Settings) -> VoiceAgent:
        """Another agent on `agent`'s loaded models, dialog and store, with other voice settings (deadlines,
        turn-taking): no model is loaded twice."""
        return cls(settings, agent.dialog, agent.transcriber, agent.speech, agent.vad, agent.records)

    def close(self) -> None:
        """Write what is still queued for the store (or leave it in the spool) and release the store."""
        if not self.records.close():
            log.error("call records not yet written are kept in %s for the next start", self.records.where)
        self.store.close()

    def warm_up(self, *, kb_answers: bool = True) -> float:
        """Run each model once and pre-synthesize the fixed prompts (and KB answers) at phone rate.

        Returns the seconds it took."""
        start = time.perf_counter()
        self.transcriber.transcribe(np.zeros(16_000, dtype=np.float32) + 0.01)
        self.dialog.warm_up()
        texts = list(self.dialog.fixed_prompts())
        texts.append(self.session_options.sorry_prompt)
        if kb_answers:
            texts += [entry.answer for entry in self.dialog.index.entries]
        made = self.speech.prepare(texts)
        warm = time.perf_counter() - start
        log.info("warm-up: %.1f s, %d sentences synthesized ahead", warm, made)
        return warm

    def open_call(
        self, call_id: str, caller: str | None, channel: str, *, can_hand_off: bool = True
    ) -> tuple[CallSession, Conversation]:
        """A fresh session and conversation for one call; `can_hand_off` False where no person can take over
        (requests for one are then offered a ticket)."""
        session = CallSession(self.vad.stream(self.vad_options), self.session_options, self.line_texts)
        return session, self.dialog.conversation(call_id, caller, channel, can_hand_off=can_hand_off)


def build_agent(
    settings: Settings,
    kb_path: Path | None = None,
    store_url: str | None = None,
    *,
    warm: bool = True,
    progress: bool = False,
    spool: bool = False,
) -> VoiceAgent:
    """Everything a call needs, loaded (and warmed): the one entry point for serve, mic, replay and bench.

    `kb_path` defaults to `dialog.kb_path`, then the sample KB; `store_url` to `store.url`. `spool`: writes the
    store refuses are kept on disk (`store.spool_path`) for a later process, as `serve` needs; without it they
    wait in memory, so `replay` or `bench` may run beside a `serve` on the same database.
    """
    from voicebot.kb import SAMPLE_KB
    from voicebot.store import open_store

    store = open_store(store_url or settings.store.url, redact_digits=settings.store.redact_digits)
    # A spool an earlier process left is written back first.
    records = RecordWriter(store, (settings.store.spool_path or store.spool_path) if spool else None)
    dialog = DialogEngine.load(
        settings, kb_path=kb_path or settings.dialog.kb_path or SAMPLE_KB, store=records, progress=progress
    )
    agent = VoiceAgent.load(settings, dialog, records)
    if warm:
        agent.warm_up()
    return agent
