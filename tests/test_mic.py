"""`voicebot mic`'s audio path, driven from a file through the same duplex bridge the sound card drives."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest
from sample_calls import CALLS_DIR, check_record, expectations

from voicebot.audio import Resampler
from voicebot.mic import AudioDeviceError, DuplexBridge, open_local_call, open_sound_device
from voicebot.replay import phone_audio
from voicebot.session import CallerHungUp

DEVICE_RATE = 48_000
BLOCK = DEVICE_RATE // 50  # 20 ms, as the sound card's callback would deliver


async def talk_from_file(agent, wav, *, speed: float) -> tuple[dict, np.ndarray]:
    """Play `wav` into the bridge as a 48 kHz microphone would, collect what the speaker would play."""
    up = Resampler(8000, DEVICE_RATE)
    mic = np.concatenate([up.process(phone_audio(wav)), up.flush(), np.zeros(DEVICE_RATE * 3, np.int16)])
    bridge = DuplexBridge(DEVICE_RATE)
    runner = open_local_call(agent, bridge)
    running = asyncio.create_task(runner.run())
    speaker = []
    for start in range(0, mic.size - BLOCK + 1, BLOCK):
        speaker.append(bridge.block(mic[start : start + BLOCK]))  # what PortAudio's callback does
        await asyncio.sleep(BLOCK / DEVICE_RATE / speed)
        if runner.session.ended:
            break
    await runner.idle()
    if not runner.session.ended:
        runner.push(CallerHungUp(0.0))
    await running
    return agent.store.get_call(runner.conversation.call_id), np.concatenate(speaker)


def test_a_question_through_the_microphone_path_is_answered_and_spoken(agent):
    wav = CALLS_DIR / "faq_returns.wav"
    call, speaker = asyncio.run(talk_from_file(agent, wav, speed=2.0))
    assert check_record(call, expectations(wav)) == []
    assert call["channel"] == "mic"
    assert speaker.dtype == np.int16 and np.abs(speaker).max() > 3000, "the bot's voice reached the speaker"


def test_mic_without_a_sound_card_says_so_and_exits_non_zero():
    try:
        open_sound_device()
    except AudioDeviceError:
        pass
    else:
        pytest.skip("this machine has a usable sound card")
    result = subprocess.run([sys.executable, "-m", "voicebot", "mic"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "PortAudio" in result.stderr or "no microphone" in result.stderr or "speaker" in result.stderr
    assert "loading" not in result.stderr, "fails before spending time on the models"
