"""`moksori serve`: limits, timeouts and sockets (`server`), WebRTC calls and ephemeral keys (`webrtc`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from .ice import IceServer, check_turn_setup, parse_ice_servers
from .values import split_csv


class ServerSettings(BaseModel):
    """Limits and timeouts of `moksori serve` (see "Load, limits and abuse" in the README)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_input_buffer_s: float = Field(120.0, gt=0)
    # sessions (Realtime + phone calls); per key only when API keys are configured
    max_sessions: int = Field(500, ge=1)
    max_sessions_per_key: int = Field(16, ge=1)
    # admission control: refuse new sessions (HTTP 503) past these
    shed_loop_lag_ms: float = Field(150.0, gt=0)  # event-loop lag p95 over the last 5 s
    shed_queue_wait_s: float = Field(10.0, gt=0)  # expected wait in a model's queue
    # sockets: open connections (default: the file limit minus a reserve), request-header
    # deadline, request-body idle timeout, telephony streams waiting for their `start`
    max_connections: int | None = Field(None, ge=16)
    header_timeout_s: float = Field(10.0, gt=0, le=300)
    body_idle_timeout_s: float = Field(30.0, gt=0, le=600)
    max_pending_streams: int = Field(64, ge=1)
    # a Realtime session with no client message for this long is closed
    session_idle_timeout_s: float = Field(900.0, gt=0)
    # WebSocket pings (every socket: Realtime, Voice Live, phone streams, the browser app): a peer
    # whose network vanished (no close, no FIN) is noticed within interval + timeout, and its
    # session ends (an interrupted reply is stored with what was heard); 0 = no pings
    ws_ping_interval_s: float = Field(5.0, ge=0, le=300)
    ws_ping_timeout_s: float = Field(5.0, gt=0, le=300)
    # on SIGTERM: refuse new sessions (/ready 503) and let live ones end, for at most this long
    # (0: stop at once); a second SIGTERM or Ctrl-C stops at once
    drain_timeout_s: float = Field(25.0, ge=0, le=3600)
    # /v1/audio/*: requests of each kind at once, upload size and length, speech length
    max_audio_requests: int = Field(2, ge=1, le=64)
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    max_upload_seconds: float = Field(1800.0, gt=0)
    max_speech_seconds: float = Field(600.0, gt=0)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("is empty: give an address to listen on, e.g. 127.0.0.1 (this machine only) "
                             "or 0.0.0.0 (every interface, needs API keys)")
        return v


class WebRTCSettings(BaseModel):
    """WebRTC calls (`POST /v1/realtime/calls`) and ephemeral keys (`POST /v1/realtime/client_secrets`)."""

    enabled: bool = True
    # ICE host candidates offered to peers. Empty: the address the call's HTTP request arrived
    # on when it is a loopback one, else every non-loopback interface. Set it behind NAT/Docker.
    ice_addresses: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # STUN/TURN servers for both ends of a call, as the browser's RTCConfiguration.iceServers (a
    # JSON list; see settings/ice.py). The server's peer uses the first STUN and the first TURN
    # URL (aiortc takes one of each); the browser app gets the whole list with its `POST /session` key.
    ice_servers: Annotated[list[IceServer], NoDecode] = Field(default_factory=list)
    # coturn's static-auth-secret (`use-auth-secret`): TURN servers listed without username and
    # credential get time-limited ones (username "EXPIRY:USER", credential HMAC-SHA1), minted for
    # each call and each page, valid this long (coturn checks it when an allocation is made)
    turn_secret: SecretStr | None = None
    turn_credential_ttl_s: int = Field(3600, ge=60, le=7 * 86400)
    # "relay": the server's peer offers only TURN relay candidates, so every call goes through
    # the TURN server (its own addresses stay hidden); a call whose relay fails is refused
    ice_transport_policy: Literal["all", "relay"] = "all"
    connect_timeout_s: float = Field(15.0, gt=0, le=300)  # offer answered, peer never connected
    # nothing (media or data) from a connected peer for this long: it vanished, the call ends
    idle_timeout_s: float = Field(20.0, gt=0, le=3600)
    # how far the engine's speaker runs ahead of the outbound track (the track's buffer is
    # dropped at once on barge-in, so this only trades underrun safety for "heard" accuracy)
    output_lead_ms: int = Field(200, ge=20, le=2000)
    max_offer_bytes: int = Field(64 * 1024, ge=1024, le=4 * 1024 * 1024)
    max_ephemeral_keys: int = Field(100_000, ge=1)
    # The browser app's same-origin `POST /session` mints an ephemeral key. When the server has
    # API keys it asks for one (the page's key field), unless this is on: then anyone who can
    # load the page can start sessions (put your own login in front of it).
    open_web_sessions: bool = False
    debug: bool = False  # GET /webrtc/debug/stats (calls, peers, loop tasks): for tests

    _split = field_validator("ice_addresses", mode="before")(split_csv)
    _ice_servers = field_validator("ice_servers", mode="before")(parse_ice_servers)

    @field_validator("turn_secret", mode="before")
    @classmethod
    def _no_empty_secret(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _turn_setup(self) -> WebRTCSettings:
        check_turn_setup(self.ice_servers, self.turn_secret.get_secret_value() if self.turn_secret else "",
                         self.ice_transport_policy == "relay")
        return self
