"""Which host addresses a call offers as ICE candidates.

aioice gathers from every interface except loopback and has no per-connection setting, so its
`get_host_addresses` is wrapped once: inside `offering(addresses)` (a context variable, so
concurrent calls do not see each other's choice) it returns those addresses instead.

Addresses for a call: `webrtc.ice_addresses` if set; else, when the HTTP request arrived on a
loopback address, that address (a peer that reached us over loopback can reach us there, and
nothing leaves the machine); else aioice's default (every non-loopback interface).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

from moksori.server.webrtc.sdp import is_loopback_address

_offered: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("moksori_ice_addresses", default=None)
_installed = False


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
    _installed = True


@contextlib.contextmanager
def offering(addresses: list[str] | None) -> Iterator[None]:
    """Candidates gathered inside this block use `addresses` (None: aioice's default)."""
    _install()
    token = _offered.set(list(addresses) if addresses else None)
    try:
        yield
    finally:
        _offered.reset(token)


def addresses_for(configured: list[str], local_host: str | None) -> list[str] | None:
    if configured:
        return list(configured)
    if local_host and is_loopback_address(local_host):
        return [local_host]
    return None


def remote_filter(ours: list[str] | None) -> Callable[[str], bool]:
    """Loopback-only calls keep only loopback remote candidates (others could never pair)."""
    if ours and all(is_loopback_address(a) for a in ours):
        return is_loopback_address
    return lambda addr: True
