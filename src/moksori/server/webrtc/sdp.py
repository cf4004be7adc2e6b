"""SDP offers: a quick sanity check before aiortc parses them (an audio line is required), the
peer's data-channel message limit, and ICE candidate filtering.

Pure functions on text; no aiortc import. aiortc's own parser still has the last word (its
errors become HTTP 400 in the route).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

# RFC 8841 section 6: a peer whose offer states no a=max-message-size takes messages of up to
# 64 KiB (aiortc applies the same default)
DEFAULT_MAX_MESSAGE_SIZE = 65536


class OfferError(ValueError):
    """The body is not a usable SDP offer; the message says why, for a person."""


@dataclass(frozen=True)
class Offer:
    sdp: str  # normalised to CRLF line endings
    audio: bool  # an m=audio section
    data_channel: bool  # an m=application ... webrtc-datachannel section
    max_message_size: int | None  # the largest data-channel message the peer takes; None: any size


def check_offer(text: str) -> Offer:
    if not text.strip():
        raise OfferError("the SDP offer is empty")
    lines = [ln.rstrip("\r") for ln in text.strip().split("\n")]
    if lines[0] != "v=0":
        raise OfferError("not an SDP offer (it must start with v=0)")
    for ln in lines:
        if len(ln) < 2 or ln[1] != "=" or not ln[0].isalpha():
            raise OfferError(f"malformed SDP line: {ln[:60]!r}")
    media = [ln for ln in lines if ln.startswith("m=")]
    audio = any(ln.startswith("m=audio ") for ln in media)
    data = any(ln.startswith("m=application ") and "webrtc-datachannel" in ln for ln in media)
    if not audio:  # a Realtime call is a voice call: without an audio line it could never hear or speak
        raise OfferError("the offer has no audio track (m=audio); a Realtime call needs one, even if the "
                         "microphone starts later")
    if not any(ln.startswith("a=ice-ufrag:") for ln in lines) or not any(ln.startswith("a=ice-pwd:") for ln in lines):
        raise OfferError("the offer has no ICE credentials (a=ice-ufrag / a=ice-pwd)")
    if not any(ln.startswith("a=fingerprint:") for ln in lines):
        raise OfferError("the offer has no DTLS fingerprint")
    return Offer("\r\n".join(lines) + "\r\n", audio, data, max_message_size(lines))


def mid_problem(sdp: str) -> str | None:
    """Why the offer's media sections cannot be told apart, or None. Each needs one `a=mid:` of
    one token, its own (RFC 8843 bundles by it; every browser sends it). aiortc takes a section without
    one, then cannot give it a transport: it raised on the answer, left that peer connection
    unclosable (kept in memory for good) and logged a traceback from a task of its own. Checked
    apart from `check_offer`, whose sanity checks do not need mids."""
    section: str | None = None
    mids: list[str] = []
    seen: set[str] = set()
    for ln in [ln.rstrip("\r") for ln in sdp.split("\n")] + ["m="]:
        if ln.startswith("m="):
            if section is not None:
                if len(mids) != 1:
                    return f"the media section {section[:40]!r} needs one a=mid line (it has {len(mids)})"
                if not mids[0] or any(ch.isspace() for ch in mids[0]):
                    return f"malformed a=mid in the media section {section[:40]!r}: {mids[0][:40]!r}"
                if mids[0] in seen:  # (unique in a description: RFC 5888; aiortc took both)
                    return f"two media sections share a=mid:{mids[0][:40]}"
                seen.add(mids[0])
            section, mids = ln, []
        elif section is not None and ln.startswith("a=mid:"):
            mids.append(ln[len("a=mid:"):])
    return None


def max_message_size(lines: list[str]) -> int | None:
    """The peer's `a=max-message-size` in its data-channel section (Chrome and aiortc say 262144,
    Firefox 1073741823): the largest server event its data channel takes. Absent: the RFC's
    default; 0 (or garbage, which aiortc will refuse anyway): None, no limit known."""
    section = False
    for ln in lines:
        if ln.startswith("m="):
            section = ln.startswith("m=application ")
        elif section and ln.startswith("a=max-message-size:"):
            value = ln.split(":", 1)[1].strip()
            if not value.isdigit() or int(value) == 0:
                return None
            return int(value)
    return DEFAULT_MAX_MESSAGE_SIZE


def candidate_address(line: str) -> str | None:
    """The connection address of an `a=candidate:` line (RFC 8839: the fifth field)."""
    parts = line.split()
    return parts[4] if len(parts) >= 8 else None


def candidate_port_ok(line: str) -> bool:
    """Whether an `a=candidate:` line's port (the sixth field) is one a packet can go to. aioice
    takes any integer, then its socket's `sendto` raised on 99999 or -1: asyncio logged a fatal
    write error and aioice's retries raised on the closed transport, tracebacks in the log."""
    parts = line.split()
    if len(parts) < 8:
        return False
    try:
        return 1 <= int(parts[5]) <= 65535
    except ValueError:
        return True  # not a number: aiortc's parser refuses it (400)


def is_loopback_address(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False  # a hostname (mDNS .local) or garbage


def keep_candidates(sdp: str, keep: Callable[[str], bool]) -> str:
    """Drop `a=candidate` lines whose address `keep` refuses, and those with a port no packet
    can go to."""
    out = []
    for ln in sdp.split("\r\n"):
        if ln.startswith("a=candidate:"):
            addr = candidate_address(ln)
            if addr is None or not keep(addr) or not candidate_port_ok(ln):
                continue
        out.append(ln)
    return "\r\n".join(out)


def candidate_types(sdp: str) -> list[str]:
    """The type (host, srflx, prflx, relay) of each `a=candidate` line, in order."""
    out = []
    for ln in sdp.split("\n"):
        if ln.startswith("a=candidate:"):
            parts = ln.split()
            if "typ" in parts[:-1]:
                out.append(parts[parts.index("typ") + 1])
    return out


def _candidates(sdp: str) -> int:
    return sum(1 for ln in sdp.split("\n") if ln.startswith("a=candidate:"))


def no_way_in(offered: str, kept: str) -> str | None:
    """Why an offer can never connect, or None. An offer that says its candidates are complete
    (`a=end-of-candidates`) and has none gives ICE nothing to check, and aioice then gathers none
    of its own either: the call could only wait for its connect timeout. (Without
    `a=end-of-candidates` the peer's checks may still come in and be learned as peer-reflexive
    candidates, as for a browser that posts its offer before gathering; so may they when
    `keep_candidates` dropped all of them, e.g. a browser on this host offering its LAN address
    to a server it reached over loopback, whose checks to the loopback address still arrive.)"""
    if _candidates(offered) or _candidates(kept) or "a=end-of-candidates" not in offered:
        return None
    return ("the offer has no ICE candidates and says none will follow (a=end-of-candidates): the peer gathered "
            "none. A peer that may only relay (iceTransportPolicy \"relay\") gathers none when its TURN server "
            "refuses its credentials or cannot be reached")


def first_audio_codec(sdp: str) -> str | None:
    """The codec an answer's audio section lists first (the one that will be sent), e.g. "opus"."""
    lines = [ln.rstrip("\r") for ln in sdp.split("\n")]
    for i, ln in enumerate(lines):
        if ln.startswith("m=audio "):
            fields = ln.split()
            if len(fields) < 4:
                return None
            pt = fields[3]
            for other in lines[i + 1:]:
                if other.startswith("m="):
                    break
                if other.startswith(f"a=rtpmap:{pt} "):
                    return other.split(" ", 1)[1].split("/")[0]
            return None
    return None
