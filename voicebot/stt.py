"""Speech to text: faster-whisper (CTranslate2, int8 on CPU) with guards against text invented on silence.

Whisper's encoder is built for 30 s windows and faster-whisper always pads to one, so a 3 s turn costs as
much as a 30 s one (~1 s on 2 cores). A caller's turn is short, so by default the encoder gets an 8 s window
(twice the audio when that is longer). Measured on 40 caller questions (tests/data/paraphrases.json) spoken
by five espeak-ng and flite voices at 8 kHz with line noise: word error rate 0.164 at 256 ms (median) with a
10 s window, 0.153 at 219 ms with 8 s, 0.156 with 5 s, but 0.437 with 4 s, and earlier 0.23 at 1.43 s with the
full 30 s. Windows just longer than the audio break recognition, hence the floor with its margin. Turns longer
than 15 s use the full path.

Whisper is known to "hear" stock phrases in silence and noise ("Thanks for watching!"). A transcript is
dropped when the model itself says it is probably not speech, when it is one of those phrases, or when the
audio is too quiet to hold speech at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from voicebot.config import ModelSettings, VoiceSettings
from voicebot.model_paths import model_path

SAMPLE_RATE = 16_000
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
    min_rms: float = 0.003  # float audio in [-1, 1]; quieter than this is line noise, not a caller
    short_window_frames: int = 800  # encoder window for short turns (10 ms frames); 3000 = Whisper's full 30 s


@dataclass(frozen=True)
class Transcript:
    text: str
    no_speech_prob: float
    avg_logprob: float
    rejected: str | None = None  # why the text was judged not to be speech, or None

    @property
    def usable(self) -> bool:
        return self.rejected is None and bool(self.text)


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
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Transcribe 16 kHz mono float32 audio in [-1, 1]."""
        audio = np.asarray(audio, dtype=np.float32)
        rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
        if rms < self.options.min_rms:
            return Transcript("", 1.0, 0.0, rejected=f"audio too quiet (rms {rms:.4f})")
        features = self._model.feature_extractor(audio)
        frames = features.shape[1]
        if frames * 2 <= 3000 and self.options.short_window_frames < 3000:
            text, no_speech, logprob = self._transcribe_short(
                features, max(self.options.short_window_frames, 2 * frames)
            )
        else:
            text, no_speech, logprob = self._transcribe_long(audio)
        rejected = None
        if no_speech > self.options.no_speech_threshold and logprob < self.options.logprob_threshold:
            rejected = f"probably not speech (no_speech_prob {no_speech:.2f}, avg_logprob {logprob:.2f})"
        elif _normalise(text) in SILENCE_PHRASES:
            rejected = f"stock phrase Whisper invents on silence: {text!r}"
        return Transcript(text, no_speech, logprob, rejected)

    def _transcribe_short(self, features: np.ndarray, window: int) -> tuple[str, float, float]:
        """One encoder pass over a `window`-frame window instead of 30 s, then greedy decoding."""
        import ctranslate2

        padded = np.zeros((features.shape[0], window), dtype=np.float32)
        padded[:, : features.shape[1]] = features[:, :window]
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(padded[None]), to_cpu=False)
        result = self._model.model.generate(
            encoded,
            [self._prompt],
            beam_size=self.options.beam_size,
            max_length=160,
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
        )
        segments = list(segments)
        text = " ".join(s.text.strip() for s in segments).strip()
        no_speech = max((s.no_speech_prob for s in segments), default=1.0)
        logprob = min((s.avg_logprob for s in segments), default=0.0)
        return text, no_speech, logprob


def load_transcriber(models: ModelSettings, voice: VoiceSettings) -> WhisperTranscriber:
    return WhisperTranscriber(
        model_path(models, "stt"), threads=models.threads, options=SttOptions(language=voice.language)
    )
