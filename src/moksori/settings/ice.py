"""STUN/TURN servers of WebRTC calls (`webrtc.ice_servers`), written as the browser writes
`RTCConfiguration.iceServers`:

    MOKSORI_WEBRTC_ICE_SERVERS='[{"urls": "stun:stun.example.org"},
                                 {"urls": "turn:turn.example.org:3478", "username": "u", "credential": "p"}]'

or, in the TOML file, one `[[webrtc.ice_servers]]` table per server. Every entry and URL is
checked here, so a typo is a start-up error naming the entry, not a call that never connects.
URLs are what both ends can use: `stun:HOST[:PORT]`, `turn:HOST[:PORT][?transport=udp|tcp]`,
`turns:HOST[:PORT][?transport=tcp]` (aiortc, the server's end, reads no IPv6 literal and no
`stuns:`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

SETTING = "MOKSORI_WEBRTC_ICE_SERVERS"
_KEYS = ("urls", "username", "credential", "credentialType")
_URL = re.compile(r"(?P<scheme>stun|turn|turns):(?P<host>[A-Za-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?"
                  r"(?:\?transport=(?P<transport>udp|tcp))?")
_EXAMPLE = ('[{"urls": "stun:stun.example.org"}, '
            '{"urls": "turn:turn.example.org:3478", "username": "u", "credential": "p"}]')
_FORMS = "stun:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT][?transport=tcp]"


class IceServer(BaseModel):
    """One entry of `webrtc.ice_servers`: its URLs (one server, several ways to reach it) and,
    for TURN, its credentials (absent: minted from `webrtc.turn_secret`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: list[str]
    username: str | None = None
    credential: SecretStr | None = None

    @property
    def is_turn(self) -> bool:
        return any(u.startswith("turn") for u in self.urls)

    @property
    def has_credentials(self) -> bool:
        return self.username is not None and self.credential is not None


def parse_url(url: str) -> dict[str, Any] | None:
    """{scheme, host, port, transport} of a STUN/TURN URL both ends can use, else None."""
    m = _URL.fullmatch(url)
    if m is None:
        return None
    scheme, port, transport = m["scheme"], m["port"], m["transport"]
    if scheme == "stun" and transport:
        return None  # RFC 7064: a STUN URL has no transport
    if scheme == "turns" and transport == "udp":
        return None  # TURN over DTLS: aiortc has none
    number = int(port) if port else (5349 if scheme == "turns" else 3478)
    if not 1 <= number <= 65535:
        return None
    return {"scheme": scheme, "host": m["host"], "port": number,
            "transport": transport or ("tcp" if scheme == "turns" else "udp" if scheme == "turn" else None)}


def parse_ice_servers(value: Any) -> Any:
    """The field's raw value (JSON text from the environment, a list from TOML) -> a list of
    entries, each checked; a ValueError says which entry and what is wrong with it."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:
            value = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{SETTING} is not JSON ({e}): give a list like {_EXAMPLE}") from None
    if not isinstance(value, list):
        raise ValueError(f"{SETTING} must be a list of servers, as the browser's RTCConfiguration.iceServers: "
                         f"{_EXAMPLE}")
    return [_entry(i, e) for i, e in enumerate(value, 1)]


def _entry(i: int, entry: Any) -> Any:
    where = f"{SETTING} server {i}"
    if isinstance(entry, IceServer):
        return entry
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is {type(entry).__name__}, not an object like {{\"urls\": \"stun:host\"}}")
    unknown = [k for k in entry if k not in _KEYS]
    if unknown:
        hint = " (the field is 'urls')" if "url" in unknown else ""
        raise ValueError(f"{where} has an unknown field {unknown[0]!r}{hint}: the fields are urls, username, credential")
    urls = entry.get("urls")
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise ValueError(f"{where} needs 'urls': a URL or a non-empty list of them ({_FORMS})")
    for url in urls:
        if parse_url(url.strip()) is None:
            why = " (an IPv6 literal: the server's WebRTC stack, aiortc, takes none; use a host name)" \
                if "[" in url else ""
            raise ValueError(f"{where}: {url[:100]!r} is not a STUN/TURN URL both ends can use{why}: "
                             f"write {_FORMS}")
    urls = [u.strip() for u in urls]
    for field in ("username", "credential"):
        if entry.get(field) is not None and not isinstance(entry[field], str):
            raise ValueError(f"{where}: {field} must be a string")
    if entry.get("credentialType", "password") != "password":
        raise ValueError(f"{where}: only credentialType \"password\" is supported")
    if (entry.get("username") is None) != (entry.get("credential") is None):
        raise ValueError(f"{where} has a username without a credential, or the reverse: give both, or neither "
                         "(with MOKSORI_WEBRTC_TURN_SECRET)")
    return {"urls": urls, "username": entry.get("username"), "credential": entry.get("credential")}


def check_turn_setup(servers: list[IceServer], secret: str, relay_only: bool) -> None:
    """The settings that go together: a TURN server without credentials needs the secret, the
    secret needs a TURN server to use it, and relaying only needs a TURN server."""
    for i, s in enumerate(servers, 1):
        if s.is_turn and not s.has_credentials and not secret:
            raise ValueError(f"{SETTING} server {i} ({s.urls[0]}) is a TURN server without username and credential: "
                             "give them, or set MOKSORI_WEBRTC_TURN_SECRET to coturn's static-auth-secret to mint "
                             "time-limited ones")
    if secret and not any(s.is_turn and not s.has_credentials for s in servers):
        raise ValueError(f"MOKSORI_WEBRTC_TURN_SECRET is set but no TURN server in {SETTING} takes it (list one "
                         "without username and credential, e.g. [{\"urls\": \"turn:turn.example.org:3478\"}])")
    if relay_only and not any(s.is_turn for s in servers):
        raise ValueError(f"MOKSORI_WEBRTC_ICE_TRANSPORT_POLICY=relay needs a TURN server in {SETTING}")
