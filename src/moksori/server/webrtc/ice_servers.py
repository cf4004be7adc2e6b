"""The STUN/TURN servers (`webrtc.ice_servers`) a call's two ends use: the browser page's list
and what the server's own peer connection takes.

Pure: settings, a user label and the clock in, plain data out (no aiortc import).

TURN credentials. A server listed with a username and credential hands them to every page that
gets a key from `POST /session` (with `open_web_sessions`, anyone who loads the page): fine for a
TURN server you do not mind being used, not otherwise. With `webrtc.turn_secret` (coturn's
`use-auth-secret` + `static-auth-secret`, the "TURN REST API") a server listed without them gets
time-limited ones instead, minted for each page and each call: username "EXPIRY:USER" (the
expiry in Unix seconds), credential base64(HMAC-SHA1(secret, username)). coturn checks the
expiry when an allocation is made; a call already relayed goes on after it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any

from moksori.server.webrtc.sdp import is_loopback_address
from moksori.settings import WebRTCSettings
from moksori.settings.ice import IceServer, parse_url

_NOT_USER = re.compile(r"[^A-Za-z0-9_.-]")


def rest_credentials(secret: str, user: str, *, ttl_s: int, now: float) -> tuple[str, str]:
    """(username, credential) for coturn's `use-auth-secret`, valid until now + ttl_s."""
    username = f"{int(now) + ttl_s}:{_NOT_USER.sub('_', user)[:64] or 'moksori'}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def _credentials(server: IceServer, cfg: WebRTCSettings, user: str, now: float) -> tuple[str | None, str | None]:
    if server.has_credentials:
        assert server.credential is not None
        return server.username, server.credential.get_secret_value()
    if server.is_turn and cfg.turn_secret is not None:
        return rest_credentials(cfg.turn_secret.get_secret_value(), user, ttl_s=cfg.turn_credential_ttl_s, now=now)
    return None, None


def for_page(cfg: WebRTCSettings, *, user: str, now: float) -> list[dict[str, Any]]:
    """The browser's `RTCConfiguration.iceServers`: every configured server, TURN ones with
    their credentials (time-limited ones minted now for `user`)."""
    out: list[dict[str, Any]] = []
    for server in cfg.ice_servers:
        entry: dict[str, Any] = {"urls": list(server.urls)}
        username, credential = _credentials(server, cfg, user, now)
        if username is not None:
            entry["username"], entry["credential"] = username, credential
        out.append(entry)
    return out


@dataclass(frozen=True)
class PeerIce:
    """The STUN/TURN setup of one call's server-side peer connection."""

    stun: str | None = None  # URL
    turn: str | None = None  # URL
    username: str | None = None
    credential: str | None = field(default=None, repr=False)
    relay_only: bool = False


def _host_is_local(url: str) -> bool:
    parsed = parse_url(url)
    host = parsed["host"] if parsed else ""
    return host == "localhost" or is_loopback_address(host)


def for_peer(cfg: WebRTCSettings, *, user: str, now: float, loopback_only: bool) -> PeerIce:
    """The first STUN and the first TURN URL (aiortc takes one of each), TURN credentials
    minted now. A call that stays on loopback (`ice.addresses_for`) uses only servers on this
    machine, unless it may only relay: a STUN query from a loopback socket to another host never
    gets an answer, and would hold the answer for aioice's 5 s gathering timeout."""
    relay_only = cfg.ice_transport_policy == "relay"
    stun = turn = None
    username = credential = None
    for server in cfg.ice_servers:
        for url in server.urls:
            if loopback_only and not relay_only and not _host_is_local(url):
                continue
            if url.startswith("stun") and stun is None and not relay_only:
                stun = url
            elif url.startswith("turn") and turn is None:
                turn = url
                username, credential = _credentials(server, cfg, user, now)
    return PeerIce(stun=stun, turn=turn, username=username, credential=credential, relay_only=relay_only)
