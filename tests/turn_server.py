"""A real coturn (`turnserver`, Debian package coturn) on 127.0.0.1 for the WebRTC TURN tests.

Its own config in a temporary directory: no daemon, no syslog, no CLI, no TLS, UDP only, a
small log file (errors and session lines). Relay ports from `relay_ports` on 127.0.0.1 (give
each instance its own range), and `allow-loopback-peers`, since both ends of a test call are on
loopback. Credentials: coturn's
time-limited ones (`use-auth-secret` with `secret`) or one static user (`user=name:password`,
long-term credentials); coturn cannot do both at once.

Also `relay_client`: `moksori.testing.webrtc_client.RtcClient` made to use given ICE servers
with iceTransportPolicy "relay", as a browser behind a NAT that only a TURN server gets through.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from servers import free_port

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
REALM = "moksori.test"


def turnserver_available() -> bool:
    return Path(TURNSERVER).is_file() and os.access(TURNSERVER, os.X_OK)


class TurnServer:
    def __init__(self, *, secret: str | None = None, user: tuple[str, str] | None = None,
                 relay_ports: tuple[int, int] = (49160, 49200)) -> None:
        assert (secret is None) != (user is None), "coturn takes time-limited or static credentials, not both"
        self.secret = secret
        self.user = user
        self.relay_ports = relay_ports
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}"

    def _config(self) -> str:
        assert self.dir is not None
        if self.secret is not None:
            auth = ["use-auth-secret", f"static-auth-secret={self.secret}"]
        else:
            assert self.user is not None
            auth = ["lt-cred-mech", f"user={self.user[0]}:{self.user[1]}"]
        lines = [
            "listening-ip=127.0.0.1", "relay-ip=127.0.0.1", f"listening-port={self.port}",
            f"min-port={self.relay_ports[0]}", f"max-port={self.relay_ports[1]}", f"realm={REALM}", "fingerprint", *auth,
            "no-tls", "no-dtls", "no-tcp", "no-cli", "allow-loopback-peers", "no-multicast-peers",
            "no-software-attribute", f"log-file={self.dir / 'turn.log'}", "simple-log", "no-stdout-log",
            f"pidfile={self.dir / 'turnserver.pid'}", f"userdb={self.dir / 'turndb'}",
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> TurnServer:
        self.dir = Path(tempfile.mkdtemp(prefix="moksori-coturn-"))
        self.port = free_port()
        conf = self.dir / "turnserver.conf"
        conf.write_text(self._config())
        self.proc = subprocess.Popen([TURNSERVER, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while not self._answers_stun():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log_text()[-2000:]
                self.stop()
                raise RuntimeError(f"turnserver did not start on 127.0.0.1:{self.port}:\n{log}")
            time.sleep(0.1)
        return self

    def _answers_stun(self) -> bool:
        """A STUN Binding request (RFC 5389) gets a success response."""
        txid = os.urandom(12)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            try:
                s.sendto(struct.pack("!HHI", 0x0001, 0, 0x2112A442) + txid, ("127.0.0.1", self.port))
                data = s.recv(2048)
            except OSError:
                return False
        return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == txid

    def log_text(self) -> str:
        path = self.dir / "turn.log" if self.dir else None
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> TurnServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def relay_client(ice_servers: list[dict[str, Any]], **kwargs: Any) -> Any:
    """An RtcClient whose peer uses `ice_servers` (the browser's form, as `POST /session` gives
    them) and only TURN relay candidates (iceTransportPolicy "relay")."""
    from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy

    from moksori.testing.webrtc_client import RtcClient

    config = RTCConfiguration(iceServers=[RTCIceServer(**s) for s in ice_servers],
                              iceTransportPolicy=RTCIceTransportPolicy.RELAY)
    return RtcClient(config=config, **kwargs)
