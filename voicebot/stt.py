"""Speech to text: faster-whisper (CTranslate2, int8 on CPU) with guards against text invented on silence.

Whisper's encoder is built for 30 s windows and faster-whisper always pads to one, so a 3 s turn costs as
much as a 30 s one (~1 s on 2 cores). A caller's turn is short, so by default the encoder gets an 8 s window
(twice the audio when that is longer). Measured on 40 caller questions (tests/data/paraphrases.json) spoken
by five espeak-ng and flite voices at 8 kHz with line noise: word error rate 0.164 at 256 ms (median) with a
10 s window, 0.153 at 219 ms with 8 s, 0.156 with 5 s, but 0.437 with 4 s, and earlier 0.23 at 1.43 s with the
full 30 s. Windows just longer than the audio break recognition, hence the floor with its margin. Turns longer
than 15 s use the full path. Windows are whole seconds: CTranslate2 keeps about 1.5 MiB of workspace for every
input shape it has run, so windows sized to the 10 ms frame grew a long-running server with each new turn length
(measured: +67 MiB over 40 lengths of 4-13 s, flat on a second pass; a 10-minute soak at 4 callers grew 120 MiB).
Rounding up to the second bounds that at 23 shapes and costs at most one second more of encoder input on turns
over 4 s.

A KB's own words can be given as `SttOptions.vocabulary`: `voicebot.vocabulary.kb_vocabulary` writes them as the
opening of a call to the company that names its brands, products and acronyms, and Whisper reads that as the
text said before the turn (its "previous text" prompt, as faster-whisper's `hotwords`). Measured on the 302
caller lines of six businesses' KBs (tests/data/kbs/*.cases.json) spoken by six espeak-ng and flite voices at
8 kHz with line noise, each KB's own vocabulary against none: word error rate 0.302 -> 0.254, better on every
KB, and 0.433 -> 0.261 on the lines that name one of the KB's terms ("do you take delta dental": "Delta
Control" -> "Delta Dental"); 152 instead of 131 of the 179 questions end in "?", which ends a turn sooner. On
the sample calls (13 turns) 8 of 113 words are wrong either way. The same names as a bare list did harm
(0.363): Whisper wrote callers' words in Title Case, heard "Canada" in "can I", and looped. The 35-55 prompt
tokens cost about 30 ms a turn (541 -> 569 ms median on two busy cores). A decode that loops anyway (the text
compresses over 2.4 to 1) is redone without the vocabulary.

Whisper is known to "hear" stock phrases in silence and noise ("Thanks for watching!"). A transcript is
dropped when the model itself says it is probably not speech, when it is one of those phrases, or when the
audio is too quiet to hold speech at all.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from voicebot.config import ModelSettings, VoiceSettings
from voicebot.model_paths import model_path

if TYPE_CHECKING:
    import ctranslate2

SAMPLE_RATE = 16_000
MAX_NEW_TOKENS = 156  # a short turn's transcript is far shorter; the cap only stops a runaway repetition loop
MAX_VOCABULARY_TOKENS = 223  # Whisper's limit for previous text: half its 448-token context, less one
FULL_WINDOW = 3000  # Whisper's 30 s, in 10 ms frames
WINDOW_STEP = 100  # encoder windows in whole seconds: a bounded set of shapes, see above
SILENCE_PHRASES = frozenset(
    {
        "",
        "you",
        "thanks for watching",
        "thank you for watching",
        "thanks for listening",
        "please subscribe",
        "subscribe",
        "uh",
        "um",
        "hmm",
        "the end",
        "music",
        "applause",
    }
)


@dataclass(frozen=True)
class SttOptions:
    language: str = "en"
    beam_size: int = 1
    no_speech_threshold: float = 0.6  # drop when no_speech_prob is above this and confidence is low
    logprob_threshold: float = -1.0
    # Several words heard at an average log-probability under this are doubtful (`Transcript.doubtful`): on the
    # sample calls and five other voices, lines Whisper garbled ("My ink card impressed.", "Go for it." for
    # "uh huh yeah") fell to -1.0..-1.9 while 2+-word lines it got right stayed above -0.9. One word is exempt:
    # a right "Okay" scores as low as -2.7.
    doubtful_logprob: float = -1.0
    min_rms: float = 0.003  # float audio in [-1, 1]; quieter than this is line noise, not a caller
    short_window_frames: int = 800  # encoder window for short turns (10 ms frames); 3000 = Whisper's full 30 s
    vocabulary: str | None = None  # names and terms to bias recognition toward (`kb_vocabulary`), or none


@dataclass(frozen=True)
class Transcript:
    text: str
    no_speech_prob: float
    avg_logprob: float
    rejected: str | None = None  # why the text was judged not to be speech, or None
    doubtful: bool = False  # speech, but Whisper was unsure of the words: ask again rather than act on them

    @property
    def usable(self) -> bool:
        return self.rejected is None and bool(self.text)


def encoder_window(frames: int, short_window_frames: int) -> int | None:
    """The encoder window for `frames` of features (10 ms each): at least `short_window_frames` and twice the audio,
    rounded up to a whole second; None when that is Whisper's full 30 s anyway (the long path)."""
    if frames * 2 > FULL_WINDOW or short_window_frames >= FULL_WINDOW:
        return None
    window = max(short_window_frames, 2 * frames)
    return -(-window // WINDOW_STEP) * WINDOW_STEP


def _looping(text: str) -> bool:
    """Whisper's own test for a decode stuck repeating itself ("Internet, Internet, Internet, ..."): the text
    compresses more than 2.4 to 1 (faster-whisper's `compression_ratio_threshold`)."""
    data = text.encode("utf-8")
    return len(data) > 2.4 * len(zlib.compress(data))


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z' ]+", "", text.lower()).strip()


class WhisperTranscriber:
    def __init__(self, folder, *, threads: int = 2, options: SttOptions | None = None) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.options = options or SttOptions()
        self._model = WhisperModel(
            str(folder), device="cpu", compute_type="int8", cpu_threads=threads, local_files_only=True
        )
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            self._model.model.is_multilingual,
            task="transcribe",
            language=self.options.language,
        )
        self._plain_prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._prompt = [*self._vocabulary_tokens(), *self._plain_prompt]

    def _vocabulary_tokens(self) -> list[int]:
        """`<|startofprev|>` and the vocabulary, as faster-whisper prompts `hotwords`; nothing without one."""
        vocabulary = (self.options.vocabulary or "").strip()
        if not vocabulary:
            return []
        tokens = self._tokenizer.encode(" " + vocabulary)
        if len(tokens) > MAX_VOCABULARY_TOKENS:
            raise ValueError(
                f"the STT vocabulary is {len(tokens)} tokens, Whisper takes at most {MAX_VOCABULARY_TOKENS}: "
                f"shorten it (kb_vocabulary's max_chars): {vocabulary[:80]!r}..."
            )
        return [self._tokenizer.sot_prev, *tokens]

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Transcribe 16 kHz mono float32 audio in [-1, 1]."""
        audio = np.asarray(audio, dtype=np.float32)
        rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
        if rms < self.options.min_rms:
            return Transcript("", 1.0, 0.0, rejected=f"audio too quiet (rms {rms:.4f})")
        features = self._model.feature_extractor(audio)
        window = encoder_window(features.shape[1], self.options.short_window_frames)
        if window is not None:
            text, no_speech, logprob = self._transcribe_short(features, window)
        else:
            text, no_speech, logprob = self._transcribe_long(audio)
        rejected = None
        if no_speech > self.options.no_speech_threshold and logprob < self.options.logprob_threshold:
            rejected = f"probably not speech (no_speech_prob {no_speech:.2f}, avg_logprob {logprob:.2f})"
        elif _normalise(text) in SILENCE_PHRASES:
            rejected = f"stock phrase Whisper invents on silence: {text!r}"
        # A decode stuck repeating itself ("uh uh uh ..." for a short "uh-huh, yeah") is no reading of the words,
        # however sure of itself Whisper is.
        unsure = len(text.split()) >= 2 and logprob < self.options.doubtful_logprob
        doubtful = rejected is None and (unsure or _looping(text))
        return Transcript(text, no_speech, logprob, rejected, doubtful)

    def _transcribe_short(self, features: np.ndarray, window: int) -> tuple[str, float, float]:
        """One encoder pass over a `window`-frame window instead of 30 s, then greedy decoding."""
        import ctranslate2

        padded = np.zeros((features.shape[0], window), dtype=np.float32)
        padded[:, : features.shape[1]] = features[:, :window]
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(padded[None]), to_cpu=False)
        text, no_speech, logprob = self._decode(encoded, self._prompt)
        if len(self._prompt) > len(self._plain_prompt) and _looping(text):
            text, no_speech, logprob = self._decode(encoded, self._plain_prompt)  # the vocabulary set it off
        return text, no_speech, logprob

    def _decode(self, encoded: ctranslate2.StorageView, prompt: list[int]) -> tuple[str, float, float]:
        """Greedy decoding of an encoded window after `prompt`."""
        result = self._model.model.generate(
            encoded,
            [prompt],
            beam_size=self.options.beam_size,
            max_length=len(prompt) + MAX_NEW_TOKENS,  # CTranslate2 counts the prompt in
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        text = self._tokenizer.decode(result.sequences_ids[0]).strip()
        return text, float(result.no_speech_prob), float(result.scores[0]) if result.scores else 0.0

    def _transcribe_long(self, audio: np.ndarray) -> tuple[str, float, float]:
        segments, _info = self._model.transcribe(
            audio,
            language=self.options.language,
            beam_size=self.options.beam_size,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            temperature=0.0,
            hotwords=self.options.vocabulary or None,
        )
        segments = list(segments)
        text = " ".join(s.text.strip() for s in segments).strip()
        no_speech = max((s.no_speech_prob for s in segments), default=1.0)
        logprob = min((s.avg_logprob for s in segments), default=0.0)
        return text, no_speech, logprob


def load_transcriber(
    models: ModelSettings, voice: VoiceSettings, *, vocabulary: str | None = None
) -> WhisperTranscriber:
    """The configured Whisper model; `vocabulary` (`kb_vocabulary` of the KB) biases it toward the KB's names."""
    options = SttOptions(language=voice.language, vocabulary=vocabulary)
    return WhisperTranscriber(model_path(models, "stt"), threads=models.threads, options=options)
