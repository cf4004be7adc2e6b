"""One small error vocabulary for the whole project.

Every library exception is translated at the boundary where it happens (a provider, a codec,
a route) into one of these, so nothing above that boundary needs to know which library ran.
`retryable` is the only distinction the retry logic looks at.
"""

from __future__ import annotations


class MoksoriError(Exception):
    """Base class. `str(err)` is always a one-line message meant for a person."""

    code = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class AudioFormatError(MoksoriError):
    """Input that is not audio, or audio in a format we do not accept."""

    code = "invalid_audio"


class AudioTooLong(AudioFormatError):
    """Audio longer than a limit allows (found while decoding, before it is all decoded)."""

    code = "audio_too_long"


class ConfigError(MoksoriError):
    """A setting is missing or wrong."""

    code = "invalid_config"


class ModelError(MoksoriError):
    """A model file is missing, corrupt or unusable."""

    code = "model_unavailable"


class ProviderError(MoksoriError):
    """A provider call failed. `retryable` says whether trying again can help."""

    code = "provider_error"
    retry_after: float | None = None  # seconds the server asked us to wait (Retry-After), if it said

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        provider: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.retryable = retryable
        self.status = status
        self.provider = provider


class ProviderTimeout(ProviderError):
    code = "provider_timeout"

    def __init__(self, message: str, *, provider: str | None = None) -> None:
        super().__init__(message, retryable=True, provider=provider)


def is_retryable_status(status: int) -> bool:
    """HTTP statuses worth retrying: timeouts, rate limits and server errors."""
    return status in (408, 409, 425, 429) or status >= 500


class ProtocolError(MoksoriError):
    """A client sent something the wire protocol does not allow."""

    code = "invalid_request_error"

    def __init__(self, message: str, *, code: str = "invalid_request_error", param: str | None = None,
                 event_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param
        self.event_id = event_id
