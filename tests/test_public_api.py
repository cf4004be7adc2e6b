"""The public surface, pinned: what users import from each package is its `__all__`, and this
test fails when a name disappears from it or a new one is added without being listed here.
Changing the surface is a decision: update the list below in the same commit."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PUBLIC: dict[str, set[str]] = {
    "moksori.providers": {
        "Provider", "ProviderError", "ProviderTimeout",
        "VAD", "VADCaps", "VADStream",
        "TurnDetector", "TurnCaps",
        "STT", "STTCaps", "STTOptions", "Transcript",
        "LLM", "LLMCaps", "Role", "Message", "ToolCall", "ToolSpec", "ChatRequest",
        "ChatEvent", "TextDelta", "ToolCallEvent", "Usage", "ChatDone",
        "TTS", "TTSCaps", "TTSOptions",
        "Denoiser", "DenoiserCaps", "DenoiseStream",
    },
    "moksori.providers.base": {
        "Provider",
        "VAD", "VADCaps", "VADStream",
        "TurnDetector", "TurnCaps",
        "STT", "STTCaps", "STTOptions", "Transcript",
        "LLM", "LLMCaps", "Role", "Message", "ToolCall", "ToolSpec", "ChatRequest",
        "ChatEvent", "TextDelta", "ToolCallEvent", "Usage", "ChatDone",
        "TTS", "TTSCaps", "TTSOptions",
        "Denoiser", "DenoiserCaps", "DenoiseStream",
    },
    "moksori.testing": {
        "run_virtual", "VirtualTimeLoop",
        "fake_stack", "EnergyVAD", "FixedTurn", "ScriptedSTT", "ScriptedLLM", "ToneTTS", "tone", "quiet",
        "play_into_session", "settle", "Recording",
    },
    "moksori.testing.fake_realtime": {"FakeRealtimeServer", "FakeSession"},
    "moksori.testing.ws_fault_proxy": {"WSFaultProxy", "ProxiedConnection"},
    "moksori.telephony": {
        "CallControl", "TwilioCallControl", "TelnyxCallControl", "PlivoCallControl", "VonageCallControl",
        "call_control_for",
        "make_stream_token", "check_stream_token",
        "twilio_signature", "verify_twilio", "verify_telnyx", "verify_telnyx_request",
        "plivo_signature_v3", "verify_plivo_v3", "verify_vonage",
        "connect_stream_twiml", "dial_twiml", "hangup_twiml", "plivo_dial_xml",
    },
    "moksori.protocols": {
        "TelephonyCodec", "codec_for", "TwilioCodec", "TelnyxCodec", "PlivoCodec", "VonageCodec",
        "Encoding", "ByteOrder", "WireMessage",
        "InboundEvent", "CallStarted", "CallAudio", "Dtmf", "MarkAck", "CallStopped", "StreamError", "Ignored",
        "OutboundCommand", "PlayAudio", "SetMark", "ClearAudio",
    },
    "moksori.audio": {
        "SUPPORTED_RATES", "Frame", "concat", "float_to_pcm16", "pcm16_to_float",
        "alaw_decode", "alaw_encode", "ulaw_decode", "ulaw_encode",
        "StreamResampler", "resample", "resample_float",
        "load_audio", "read_wav", "read_wav_bytes", "wav_bytes", "write_wav",
    },
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_the_pinned_surface(module: str) -> None:
    mod = importlib.import_module(module)
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"{module} has no __all__"
    assert len(exported) == len(set(exported)), f"{module}.__all__ lists a name twice"
    missing = PUBLIC[module] - set(exported)
    unlisted = set(exported) - PUBLIC[module]
    assert not missing, f"{module}.__all__ lost {sorted(missing)}"
    assert not unlisted, f"{module}.__all__ gained {sorted(unlisted)}: pin them in tests/test_public_api.py"


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_exported_name_exists(module: str) -> None:
    mod = importlib.import_module(module)
    absent = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not absent, f"{module}.__all__ names what it does not define: {absent}"


def test_the_reexports_are_the_same_objects() -> None:
    import moksori.audio.frames
    import moksori.protocols.twilio
    import moksori.providers
    import moksori.providers.base
    import moksori.testing.virtual_time

    for name in PUBLIC["moksori.providers.base"]:
        assert getattr(moksori.providers, name) is getattr(moksori.providers.base, name), name
    assert moksori.audio.Frame is moksori.audio.frames.Frame
    assert moksori.protocols.TwilioCodec is moksori.protocols.twilio.TwilioCodec
    assert moksori.testing.run_virtual is moksori.testing.virtual_time.run_virtual


def test_importing_the_contracts_loads_no_model_runtime() -> None:
    """A provider written against `moksori.providers` must not pay for Whisper, llama.cpp or ONNX."""
    code = ("import sys, moksori.providers, moksori.protocols, moksori.audio, moksori.telephony, moksori.testing\n"
            "heavy = ['faster_whisper', 'ctranslate2', 'llama_cpp', 'onnxruntime', 'piper', 'aiortc', 'av']\n"
            "print(','.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "", f"imported model runtimes: {out.stdout.strip()}"
