"""A client for an OpenAI-compatible `/v1/moderations` endpoint (OpenAI, or a self-hosted one).

`POST {base_url}/moderations {"input": text, "model": ...}` -> `results[0].flagged` and the
categories that were flagged. Through the shared HTTP helpers (errors in the project's
vocabulary) and `providers.resilience` (retries of retryable failures with backoff, bounded by
one total time limit). When the endpoint fails, the caller's `failure` setting decides:
"open" lets the text through (and logs), "closed" blocks it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from moksori.errors import ProviderError
from moksori.providers.http import (LoopClient, answer_error, check_base_url, host_of, read_at_most, too_large,
                                   transport_error)
from moksori.providers.resilience import RetryPolicy, Timeouts, resilient_stream

log = logging.getLogger(__name__)
PROVIDER = "moderation"
MAX_ANSWER_BYTES = 1 << 20  # a verdict on one text, with category scores: a few KB


@dataclass(frozen=True)
class ModerationResult:
    flagged: bool
    categories: tuple[str, ...] = ()
    error: str | None = None  # set when the endpoint could not give an answer


class ModerationClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, model: str | None = None,
                 timeout_s: float = 2.0, retries: int = 1) -> None:
        self._base = check_base_url(base_url, "moderation")
        self._host = host_of(self._base)
        self._api_key = api_key
        self.model = model
        self.timeout_s = timeout_s
        self._policy = RetryPolicy(max_attempts=retries + 1, base_delay_s=0.1, max_delay_s=0.5)
        self._client = LoopClient(timeout_s)

    def _url(self) -> httpx.URL:
        return self._base.copy_with(path=self._base.path.rstrip("/") + "/moderations")

    async def _once(self, text: str) -> AsyncIterator[ModerationResult]:
        body: dict[str, Any] = {"input": text}
        if self.model:
            body["model"] = self.model
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:  # streamed, read with caps: a hostile server's huge body is never held whole
            async with self._client.get().stream("POST", self._url(), json=body, headers=headers) as resp:
                err = await answer_error("moderation", self._host, resp, PROVIDER,
                                         key_hint="check guardrails.moderation_api_key")
                if err is not None:
                    raise err
                raw, whole = await read_at_most(resp, MAX_ANSWER_BYTES)
        except httpx.HTTPError as e:
            raise transport_error("moderation", self._host, e, PROVIDER) from None
        if not whole:
            raise too_large("moderation", self._host, MAX_ANSWER_BYTES, PROVIDER)
        try:
            result = json.loads(raw)["results"][0]
            flagged = bool(result["flagged"])
            cats = tuple(sorted(str(k) for k, v in (result.get("categories") or {}).items() if v is True))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise ProviderError(f"moderation server {self._host} sent an unreadable answer", retryable=False,
                                provider=PROVIDER) from None
        yield ModerationResult(flagged, cats)

    async def check(self, text: str) -> ModerationResult:
        """Never raises: a failure is a result with `error` set."""
        try:
            stream = resilient_stream(lambda: self._once(text), policy=self._policy,
                                      timeouts=Timeouts(total_s=self.timeout_s), provider=PROVIDER)
            async with contextlib.aclosing(stream) as results:
                async for res in results:
                    return res
            return ModerationResult(False, error="the moderation server sent no result")
        except ProviderError as e:
            log.warning("moderation check failed: %s", e)
            return ModerationResult(False, error=str(e))

    async def close(self) -> None:
        await self._client.aclose()
