"""Phone calls: the carriers' accounts (`twilio`, `telnyx`, `plivo`, `vonage`) and the media streams'
own settings (`telephony`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from .values import split_csv


class TwilioSettings(BaseModel):
    account_sid: str | None = None
    auth_token: SecretStr | None = None
    api_base: str = "https://api.twilio.com"


class TelnyxSettings(BaseModel):
    api_key: SecretStr | None = None
    # the portal's webhook signing public key (base64 Ed25519; public, so no SecretStr): required by
    # the TeXML answer URL
    public_key: str | None = None
    api_base: str = "https://api.telnyx.com"


class PlivoSettings(BaseModel):
    auth_id: str | None = None
    auth_token: SecretStr | None = None
    api_base: str = "https://api.plivo.com"


class VonageSettings(BaseModel):
    application_id: str | None = None
    private_key: SecretStr | None = None  # PEM text, or a path to it
    signature_secret: SecretStr | None = None  # signed webhooks (HS256): required by the answer URL
    api_base: str = "https://api.nexmo.com"


class TelephonySettings(BaseModel):
    """Phone calls through carrier media streams (see `moksori.server.telephony_routes`)."""

    # HMAC key of the per-call stream tokens. Unset: a random key per process, which is fine for
    # one server process; set it when webhooks and streams may reach different processes, or
    # when your own webhook code mints tokens (`moksori.telephony.make_stream_token`).
    stream_secret: SecretStr | None = None
    stream_token_ttl_s: int = Field(600, ge=10, le=86400)
    # E.164 numbers the agent may transfer a caller to; empty: no `transfer_call` tool.
    transfer_numbers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    goodbye: str = "Goodbye!"  # said before `end_call` hangs up
    # the agent's end_call/transfer_call tools; auto: on, except with the packaged SmolLM2-135M
    tools: Literal["auto", "on", "off"] = "auto"
    # /telephony/debug/* (call timelines, task and memory counters): for tests, never in production
    debug: bool = False
    # a media stream must send its `start` (with a valid token) this soon after it opens
    start_timeout_s: float = Field(10.0, gt=0, le=120)
    # the API key whose tenant phone calls are stored under (the key that reads them through the
    # Conversations API); unset: the only configured key, or the keyless `default` tenant
    owner_key: SecretStr | None = None

    _split = field_validator("transfer_numbers", mode="before")(split_csv)
