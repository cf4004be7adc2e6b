"""Test your own agent logic in milliseconds: a virtual-time event loop, scripted fake providers
(named as fakes: they stand in for models in logic tests, never for model quality), and a harness
that plays audio into a session and shows what came out.

    async def main() -> Recording:
        session = Session(fake_stack(stt=ScriptedSTT(["hello there."])), SessionConfig())
        rec = await play_into_session(session, [quiet(0.5), tone(1.5), quiet(4.0)])
        await settle(session)
        await session.close()
        return rec

    rec = run_virtual(main())  # 6 s of conversation, milliseconds of real time
    rec.of(AgentResponseDone)

Also here, imported from their modules (they need the server's extras): `fake_realtime`
(a scripted Realtime upstream), `ws_fault_proxy` (a WebSocket proxy that injects faults) and
`webrtc_client` (an aiortc client).
"""

from moksori.testing.fakes import EnergyVAD, FixedTurn, ScriptedLLM, ScriptedSTT, ToneTTS, fake_stack, quiet, tone
from moksori.testing.harness import Recording, play_into_session, settle
from moksori.testing.virtual_time import VirtualTimeLoop, run_virtual

__all__ = [
    "run_virtual", "VirtualTimeLoop",
    "fake_stack", "EnergyVAD", "FixedTurn", "ScriptedSTT", "ScriptedLLM", "ToneTTS", "tone", "quiet",
    "play_into_session", "settle", "Recording",
]
