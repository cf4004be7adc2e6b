"""`UpstreamOptions` from Moksori's settings (`MOKSORI_BRAIN`, `MOKSORI_REALTIME_*`)."""

from __future__ import annotations

from moksori.errors import ConfigError
from moksori.settings import Settings

from .options import ReconnectPolicy, ReseedBudget, SessionOptions, Timeouts, UpstreamOptions, resolve_endpoint

__all__ = ["options_from_settings"]


def options_from_settings(settings: Settings, *, instructions: str = "",
                          tools: tuple[dict, ...] = ()) -> UpstreamOptions:
    """Raises `ConfigError` (one line naming the setting) when the upstream is not usable."""
    r = settings.realtime
    if not r.url:
        raise ConfigError("MOKSORI_REALTIME_URL is not set",
                          hint="e.g. wss://api.openai.com/v1/realtime?model=gpt-realtime")
    key = r.api_key.get_secret_value() if r.api_key is not None else None
    endpoint = resolve_endpoint(r.url, flavor=r.flavor, api_key=key or None, model=r.model, api_version=r.api_version)
    try:
        session = SessionOptions(
            instructions=instructions, voice=r.voice, tools=tuple(tools),
            turn="manual" if r.turn_detection == "moksori" else r.turn_detection, eagerness=r.eagerness,
            silence_duration_ms=r.silence_duration_ms, transcription_model=r.transcription_model)
        return UpstreamOptions(
            endpoint=endpoint, session=session,
            timeouts=Timeouts(connect_s=r.connect_timeout_s, first_event_s=r.first_event_timeout_s,
                              response_s=r.response_timeout_s, idle_s=r.idle_timeout_s,
                              keepalive_s=r.keepalive_s or None),
            reconnect=ReconnectPolicy(max_attempts=r.max_reconnect_attempts, rotate_after_s=r.rotate_after_s or None,
                                      resume=r.resume),
            reseed=ReseedBudget(max_items=r.reseed_max_items, max_chars=r.reseed_max_chars))
    except ValueError as e:
        raise ConfigError(f"invalid realtime settings: {e}") from None
