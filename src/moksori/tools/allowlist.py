"""Which MCP server URLs a Realtime client may make this server reach.

A Realtime client's `{"type": "mcp", "server_url": ...}` tool makes the *server* open HTTP
connections to a URL the client chose: without a limit that is server-side request forgery
(cloud metadata endpoints, internal admin ports). So only URLs under an entry of
`tools.realtime_mcp_allow` are reached, and the default list is empty: none.

An entry is a URL prefix. A URL matches when its scheme, host and port are the entry's and
its path starts with the entry's path at a segment boundary: `https://mcp.example.com/v1`
allows `https://mcp.example.com/v1/mcp` but neither `https://mcp.example.com/v10` nor
`https://mcp.example.com.evil.net/v1`. URLs with user info (`user@host`) never match. The
check is on the URL as written; the MCP SDK follows redirects only within the same origin.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _Prefix:
    scheme: str
    host: str
    port: int
    path: str


def _parse(url: str) -> _Prefix | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None or parts.password is not None:
        return None
    host = parts.hostname.lower().rstrip(".")
    return _Prefix(scheme, host, port or _DEFAULT_PORTS[scheme], parts.path or "/")


class URLAllowList:
    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = tuple(e for e in entries if e.strip())
        parsed = [_parse(e) for e in self.entries]
        bad = [e for e, p in zip(self.entries, parsed) if p is None]
        if bad:
            from moksori.errors import ConfigError

            raise ConfigError(f"tools.realtime_mcp_allow: {bad[0]!r} is not an http(s) URL prefix",
                              hint="e.g. https://mcp.example.com/ or http://127.0.0.1:8765/mcp")
        self._prefixes = tuple(p for p in parsed if p is not None)

    def __bool__(self) -> bool:
        return bool(self._prefixes)

    def check(self, url: str) -> str | None:
        """None when `url` may be reached, else the reason (one sentence for the client)."""
        target = _parse(url)
        if target is None:
            return "server_url must be an http(s) URL without user info"
        if not self._prefixes:
            return "this server does not connect to MCP servers named by clients (tools.realtime_mcp_allow is empty)"
        for p in self._prefixes:
            if (p.scheme, p.host, p.port) != (target.scheme, target.host, target.port):
                continue
            if p.path == "/" or target.path == p.path or target.path.startswith(p.path.rstrip("/") + "/"):
                return None
        return "server_url is not in this server's allow-list for MCP servers (tools.realtime_mcp_allow)"
