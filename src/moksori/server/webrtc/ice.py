"""Which host addresses a call offers as ICE candidates, and why its TURN relay failed.

aioice gathers from every interface except loopback and has no per-connection setting, so its
`get_host_addresses` is wrapped once: inside `offering(addresses)` (a context variable, so
concurrent calls do not see each other's choice) it returns those addresses instead. Its
`relayed_candidate` is wrapped too: aioice drops a failed TURN allocation silently (the call
just has no relay candidate), so the failure is noted in the block's `Gathering`.

Addresses for a call: `webrtc.ice_addresses` if set; else, when the HTTP request arrived on a
loopback address, that address (a peer that reached us over loopback can reach us there, and
nothing leaves the machine); else aioice's default (every non-loopback interface).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from moksori.server.webrtc.sdp import is_loopback_address

_offered: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("moksori_ice_addresses", default=None)
_installed = False


@dataclass
class Gathering:
    """What one `offering` block's candidate gathering ran into."""

    turn_error: str | None = None  # why the TURN allocation failed (None: it did not, or none was tried)


_gathering: contextvars.ContextVar[Gathering | None] = contextvars.ContextVar("moksori_ice_gathering", default=None)


def _turn_failure(e: BaseException) -> str:
    if isinstance(e, asyncio.CancelledError):  # aioice gives STUN and TURN 5 s, then cancels
        return "no answer from the TURN server within aioice's 5 s"
    text = str(e) or type(e).__name__
    return text.replace("STUN transaction failed", "refused").replace("STUN transaction timed out", "no answer")


def _install() -> None:
    global _installed
    if _installed:
        return
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = _offered.get()
        if chosen is None:
            return original(use_ipv4, use_ipv6)
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses

    relayed = getattr(aioice.ice, "relayed_candidate", None)
    if relayed is not None:  # aioice >= 0.10; without it a failure is only seen as a missing candidate
        async def relayed_candidate(*args: Any, **kwargs: Any) -> Any:
            try:
                return await relayed(*args, **kwargs)
            except BaseException as e:
                gathering = _gathering.get()
                if gathering is not None and gathering.turn_error is None:
                    gathering.turn_error = _turn_failure(e)
                raise

        aioice.ice.relayed_candidate = relayed_candidate
    _installed = True


@contextlib.contextmanager
def offering(addresses: list[str] | None) -> Iterator[Gathering]:
    """Candidates gathered inside this block use `addresses` (None: aioice's default); what went
    wrong is in the `Gathering` it yields."""
    _install()
    gathering = Gathering()
    token = _offered.set(list(addresses) if addresses else None)
    token2 = _gathering.set(gathering)
    try:
        yield gathering
    finally:
        _gathering.reset(token2)
        _offered.reset(token)


def addresses_for(configured: list[str], local_host: str | None) -> list[str] | None:
    if configured:
        return list(configured)
    if local_host and is_loopback_address(local_host):
        return [local_host]
    return None


def loopback_only(ours: list[str] | None) -> bool:
    return bool(ours) and all(is_loopback_address(a) for a in ours or ())


def remote_filter(ours: list[str] | None, *, relay_only: bool = False) -> Callable[[str], bool]:
    """Loopback-only calls keep only loopback remote candidates (others could never pair with a
    loopback address); a call that only relays keeps every one (its relay reaches them)."""
    if loopback_only(ours) and not relay_only:
        return is_loopback_address
    return lambda addr: True


def nominated_types(pc: Any) -> tuple[str, str] | None:
    """(local, remote) candidate types of the pair a peer connection's ICE chose, e.g. ("host",
    "relay"); None before it chose. Read from aioice's private state: for debug stats only."""
    try:
        transport = pc.sctp.transport.transport if pc.sctp is not None else \
            next(t.receiver.transport.transport for t in pc.getTransceivers() if t.receiver.transport)
        pairs = transport._connection._nominated  # noqa: SLF001 - no public way to read it
        pair = pairs.get(1) or next(iter(pairs.values()))
        return pair.local_candidate.type, pair.remote_candidate.type
    except Exception:  # noqa: BLE001 - not chosen yet, closed, or an aioice without this state
        return None
