"""Server-side tools (`tools`): built-ins, MCP servers (`[[tools.mcp]]`), HTTP tools (`[[tools.http]]`),
and the MCP servers a Realtime client may name."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import NoDecode

from .values import split_csv


class MCPServerSettings(BaseModel):
    """One `[[tools.mcp]]` entry: an MCP server over stdio (`command`) or Streamable HTTP (`url`).

    Values in `env` and `headers` may name environment variables as `${NAME}`, so secrets stay out
    of the file: `headers = { Authorization = "Bearer ${CRM_TOKEN}" }`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")
    command: str | None = None  # stdio: the executable ...
    args: list[str] = Field(default_factory=list)  # ... and its arguments
    env: dict[str, str] = Field(default_factory=dict)  # stdio: extra environment (`${VAR}` expanded)
    cwd: str | None = None
    url: str | None = None  # Streamable HTTP endpoint, e.g. http://127.0.0.1:8765/mcp
    headers: dict[str, str] = Field(default_factory=dict)  # HTTP headers (`${VAR}` expanded)
    allowed_tools: list[str] | None = None  # None: every tool the server lists
    timeout_s: float = Field(10.0, gt=0, le=600)  # per call
    connect_timeout_s: float = Field(15.0, gt=0, le=600)

    @model_validator(mode="after")
    def _one_transport(self) -> "MCPServerSettings":
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r} needs exactly one of command (stdio) or url (HTTP)")
        return self


class HTTPToolSettings(BaseModel):
    """One `[[tools.http]]` entry: Moksori POSTs the call's arguments as JSON to `url` and gives
    the answer back to the LLM."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    url: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    headers: dict[str, str] = Field(default_factory=dict)  # `${VAR}` expanded
    timeout_s: float = Field(10.0, gt=0, le=600)
    max_response_bytes: int = Field(256 * 1024, ge=1024, le=64 * 1024 * 1024)


class ToolsSettings(BaseModel):
    """Server-side tools, the same for every entry point (browser, Realtime API, phone, CLI)."""

    timezone: str = "UTC"  # IANA name for the `current_time` built-in, e.g. Asia/Seoul
    builtins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["current_time"])
    max_result_chars: int = Field(4000, ge=100, le=200_000)  # a tool answer is cut to this for the LLM
    slow_after_s: float = Field(1.5, ge=0)  # say a short filler when a tool takes longer than this
    mcp: list[MCPServerSettings] = Field(default_factory=list)
    http: list[HTTPToolSettings] = Field(default_factory=list)
    # MCP servers a Realtime client may make this server reach (`{"type": "mcp", "server_url"}`):
    # URL prefixes such as "https://mcp.example.com/" or "http://127.0.0.1:8765/mcp". Empty (the
    # default): none, because the server would otherwise fetch any URL a client names (SSRF).
    realtime_mcp_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    realtime_mcp_timeout_s: float = Field(15.0, gt=0, le=600)  # per call of a client's MCP tool
    # how long a call that needs approval waits for the client's `mcp_approval_response`
    realtime_mcp_approval_timeout_s: float = Field(60.0, gt=0, le=3600)

    _split = field_validator("builtins", "realtime_mcp_allow", mode="before")(split_csv)
