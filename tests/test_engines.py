"""Each real embedded model does its job on a tiny input."""

from __future__ import annotations

import json

import numpy as np
from scipy.signal import resample_poly

from voicebot.llm import Message
from voicebot.stt import encoder_window


def test_piper_speaks_at_the_voice_sample_rate(synthesizer, settings):
    from voicebot.model_paths import model_path

    config = json.loads((model_path(settings.models, "tts") / "voice.onnx.json").read_text())
    assert synthesizer.sample_rate == config["audio"]["sample_rate"] == 22_050
    sentences = list(synthesizer.stream("Your order has shipped. It will arrive on Friday."))
    assert [s.text for s in sentences] == ["Your order has shipped.", "It will arrive on Friday."]
    for sentence in sentences:
        seconds = len(sentence.audio) / synthesizer.sample_rate
        assert sentence.audio.dtype == np.int16 and 0.5 < seconds < 4.0
        assert np.abs(sentence.audio).max() > 3000, "speech, not silence"


def test_piper_says_a_sentence_the_same_way_every_time_unless_asked_for_variation(synthesizer, settings):
    from voicebot.tts import load_synthesizer

    text = "I would like to change my delivery address, please."
    first = synthesizer.synthesize(text)
    assert np.array_equal(first, synthesizer.synthesize(text))
    assert np.array_equal(first, load_synthesizer(settings.models).synthesize(text)), "and in another process"
    varied = load_synthesizer(settings.models, variation=True)
    assert varied.voice_id != synthesizer.voice_id, "the TTS cache keeps the two renderings apart"
    takes = [varied.synthesize(text) for _ in range(2)]
    assert not np.array_equal(*takes), "the voice's own noise: each rendering differs"


def test_phone_speech_caches_fixed_lines_but_not_one_off_text(synthesizer):
    from voicebot.tts_cache import PhoneSpeech

    speech = PhoneSpeech(synthesizer, max_entries=2)
    assert speech.prepare(["Hi there. How can I help?"]) == 2
    pcm, ms = speech.sentence("Hi there.")
    assert ms == 0.0 and pcm.dtype == np.int16 and 0.3 < pcm.size / 8000 < 3.0  # 8 kHz phone audio
    assert speech.sentence("We ship to Norway.", store=False)[1] > 0  # an LLM sentence: made, not kept
    assert speech.sentence("Hi there.")[1] == 0.0 and speech.sentence("How can I help?")[1] == 0.0
    assert speech.sentence("We ship to Norway.", store=False)[1] > 0
    speech.sentence("Goodbye.")  # stored: the least recently used line goes
    assert speech.sentence("Hi there.")[1] > 0


def test_whisper_transcribes_a_short_utterance(synthesizer, transcriber):
    speech = synthesizer.synthesize("I would like to return my order.")
    audio16k = resample_poly(speech.astype(np.float32) / 32768, 320, 441).astype(np.float32)
    padded = np.concatenate([np.zeros(4000, np.float32), audio16k, np.zeros(4000, np.float32)])
    transcript = transcriber.transcribe(padded)
    assert transcript.usable, transcript.rejected
    words = transcript.text.lower()
    assert "return" in words and "order" in words


def test_the_encoder_window_is_twice_the_turn_in_whole_seconds():
    assert encoder_window(150, 800) == 800  # a 1.5 s turn: the short window
    assert encoder_window(401, 800) == 900  # 4.01 s: twice is 802 frames, rounded up to 9 s
    assert encoder_window(1450, 800) == 2900
    # Every turn from 0.1 s to 15 s runs in one of 23 windows, whole seconds from 8 to 30 s (a new shape costs
    # CTranslate2 about 1.5 MiB for good), each at least twice the turn.
    windows = {frames: encoder_window(frames, 800) for frames in range(10, 1501)}
    assert set(windows.values()) == set(range(800, 3001, 100))
    assert all(window >= 2 * frames for frames, window in windows.items())
    assert encoder_window(1501, 800) is None  # over 15 s: the full 30 s path
    assert encoder_window(100, 3000) is None  # short windows turned off


def test_whisper_invents_nothing_on_silence_or_hum(transcriber):
    rng = np.random.default_rng(0)
    assert not transcriber.transcribe(np.zeros(16_000 * 2, np.float32)).usable
    hiss = (rng.standard_normal(16_000 * 2) * 0.001).astype(np.float32)
    assert not transcriber.transcribe(hiss).usable


def test_llm_answers_a_one_line_prompt(llm):
    reply = llm.complete(
        [Message("system", "You answer in one short sentence."), Message("user", "What is two plus two?")],
        max_tokens=24,
        temperature=0.0,
    )
    assert "4" in reply or "four" in reply.lower()


def test_llm_streams_pieces(llm):
    pieces = list(llm.stream([Message("user", "Say hello.")], max_tokens=8, temperature=0.0))
    assert len(pieces) >= 2 and "".join(pieces).strip()


def test_embedder_ranks_a_paraphrase_above_an_unrelated_sentence(embedder):
    query, paraphrase, unrelated = embedder.encode(
        ["How do I send back something I bought?", "What is your returns policy?", "The train leaves at noon."]
    )
    assert embedder.dimension == 384
    assert np.allclose(np.linalg.norm(query), 1.0, atol=1e-5)
    assert float(query @ paraphrase) > float(query @ unrelated) + 0.2
