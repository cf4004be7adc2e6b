"""Call control over each carrier's REST API: hang up, transfer. Lives beside the codecs.

    control = call_control_for("twilio", settings)      # None when credentials are missing
    await control.hangup(call_id)
    await control.transfer(call_id, "+15551234567")

Wire facts (each carrier's REST reference):
- Twilio: POST {api_base}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json, HTTP basic
  (AccountSid, AuthToken), form body `Status=completed` (hang up) or `Twiml=<Response><Dial>...`.
- Telnyx: POST {api_base}/v2/calls/{call_control_id}/actions/hangup | /actions/transfer, JSON
  (`{"to": "+..."}` for transfer), `Authorization: Bearer <API key>`.
- Plivo: DELETE {api_base}/v1/Account/{auth_id}/Call/{call_uuid}/ (hang up, 204) and POST to the
  same resource with JSON {"legs": "aleg", "aleg_url": ..., "aleg_method": ...} (transfer, 202):
  Plivo fetches XML that dials the number from `aleg_url`, so a Plivo transfer needs that URL
  (`transfer_url`; we append `to=<number>`; serve `twiml.plivo_dial_xml(number)` there). Basic
  auth (auth_id, auth_token), JSON bodies, as Plivo's SDK sends them.
- Vonage: PUT {api_base}/v1/calls/{uuid}, JSON {"action":"hangup"} or {"action":"transfer",
  "destination":{"type":"ncco","ncco":[{"action":"connect","endpoint":[{"type":"phone",
  "number":"..."}]}]}} (numbers without "+"), `Authorization: Bearer <JWT>`, the JWT signed
  RS256 with the application's private key (claims application_id, iat, jti, exp).

Errors are translated here and nothing else escapes: a non-2xx answer becomes
`ProviderError(retryable=is_retryable_status(status), status=..., provider=...)` with the
carrier's own message, a timeout `ProviderTimeout`, an unreachable host a retryable
`ProviderError`. A transfer target that is not an E.164 number is a non-retryable
`ProviderError` raised before any request. Hanging up a call the carrier reports as already
ended (Plivo 404, Telnyx error 90018) succeeds quietly. None of this was run against the live
carriers; the tests check the requests against a local server.
"""

from __future__ import annotations

import abc
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import quote, urlencode, urlsplit

import httpx

from moksori.errors import ConfigError, ProviderError, ProviderTimeout, is_retryable_status
from moksori.telephony.twiml import dial_twiml

_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_NUMBER_PUNCTUATION = re.compile(r"[\s\-.()]")


class CallControl(abc.ABC):
    """Hang up or transfer a live call. One instance per carrier account; safe to share."""

    carrier: ClassVar[str]

    def __init__(self, *, api_base: str, client: httpx.AsyncClient | None = None, timeout: float = 10.0) -> None:
        self.api_base = api_base.rstrip("/")
        self._client = client
        self._owns_client = client is None
        self._timeout = timeout

    @abc.abstractmethod
    async def hangup(self, call_id: str) -> None:
        """End the call now."""

    @abc.abstractmethod
    async def transfer(self, call_id: str, to_number: str) -> None:
        """Bridge the caller to `to_number` (E.164, e.g. +15551234567); our leg ends."""

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> "CallControl":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------- shared plumbing

    def _url(self, *segments: str) -> str:
        return self.api_base + "".join("/" + _segment(s) for s in segments)

    def _number(self, to_number: str) -> str:
        number = _NUMBER_PUNCTUATION.sub("", to_number) if isinstance(to_number, str) else ""
        if not _E164.match(number):
            raise ProviderError(
                f"{self.carrier}: cannot transfer to {to_number!r}: not an E.164 phone number like +15551234567",
                retryable=False,
                provider=self.carrier,
            )
        return number

    def _call_id(self, call_id: str) -> str:
        if not isinstance(call_id, str) or not call_id.strip():
            raise ProviderError(f"{self.carrier}: a call id is required", retryable=False, provider=self.carrier)
        return call_id.strip()

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        host = urlsplit(url).netloc or url
        try:
            response = await self._client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise ProviderTimeout(f"{self.carrier}: {method} {host} timed out", provider=self.carrier) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as e:
            raise ProviderError(
                f"{self.carrier}: bad API URL {url!r}: {e}", retryable=False, provider=self.carrier, hint="check api_base"
            ) from None
        except httpx.TransportError as e:
            raise ProviderError(
                f"{self.carrier}: cannot reach {host}: {type(e).__name__}", retryable=True, provider=self.carrier
            ) from None
        except httpx.HTTPError as e:
            raise ProviderError(f"{self.carrier}: request failed: {e}", retryable=False, provider=self.carrier) from None
        return response

    def _raise_for_status(self, response: httpx.Response) -> None:
        if 200 <= response.status_code < 300:
            return
        status = response.status_code
        raise ProviderError(
            f"{self.carrier} answered {status}: {_carrier_message(response)}",
            retryable=is_retryable_status(status),
            status=status,
            provider=self.carrier,
        )


# --------------------------------------------------------------------------- Twilio


class TwilioCallControl(CallControl):
    carrier = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_base: str = "https://api.twilio.com",
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(api_base=api_base, client=client, timeout=timeout)
        self._auth = httpx.BasicAuth(account_sid, auth_token)
        self.account_sid = account_sid

    def _call_url(self, call_id: str) -> str:
        return self._url("2010-04-01", "Accounts", self.account_sid, "Calls", self._call_id(call_id) + ".json")

    async def hangup(self, call_id: str) -> None:
        response = await self._request("POST", self._call_url(call_id), auth=self._auth, data={"Status": "completed"})
        self._raise_for_status(response)

    async def transfer(self, call_id: str, to_number: str) -> None:
        twiml = dial_twiml(self._number(to_number), declaration=False)
        response = await self._request("POST", self._call_url(call_id), auth=self._auth, data={"Twiml": twiml})
        self._raise_for_status(response)


# --------------------------------------------------------------------------- Telnyx


class TelnyxCallControl(CallControl):
    carrier = "telnyx"
    ALREADY_ENDED = "90018"  # Telnyx error code: "Call has already ended"

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str = "https://api.telnyx.com",
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(api_base=api_base, client=client, timeout=timeout)
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}

    async def _action(self, call_id: str, action: str, body: dict[str, Any]) -> httpx.Response:
        url = self._url("v2", "calls", self._call_id(call_id), "actions", action)
        return await self._request("POST", url, headers=self._headers, json=body)

    async def hangup(self, call_id: str) -> None:
        response = await self._action(call_id, "hangup", {})
        if response.status_code == 422 and self.ALREADY_ENDED in _error_codes(response):
            return
        self._raise_for_status(response)

    async def transfer(self, call_id: str, to_number: str) -> None:
        response = await self._action(call_id, "transfer", {"to": self._number(to_number)})
        self._raise_for_status(response)


# --------------------------------------------------------------------------- Plivo


class PlivoCallControl(CallControl):
    carrier = "plivo"

    def __init__(
        self,
        auth_id: str,
        auth_token: str,
        *,
        transfer_url: str | None = None,
        transfer_method: str = "POST",
        api_base: str = "https://api.plivo.com",
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(api_base=api_base, client=client, timeout=timeout)
        self._auth = httpx.BasicAuth(auth_id, auth_token)
        self.auth_id = auth_id
        self.transfer_url = transfer_url
        self.transfer_method = transfer_method.upper()

    def _call_url(self, call_id: str) -> str:
        return self._url("v1", "Account", self.auth_id, "Call", self._call_id(call_id)) + "/"

    async def hangup(self, call_id: str) -> None:
        response = await self._request("DELETE", self._call_url(call_id), auth=self._auth)
        if response.status_code == 404:  # already ended
            return
        self._raise_for_status(response)

    async def transfer(self, call_id: str, to_number: str) -> None:
        number = self._number(to_number)
        if not self.transfer_url:
            raise ProviderError(
                "plivo: transfers need transfer_url, a public URL that returns Plivo XML dialing the number",
                retryable=False,
                provider=self.carrier,
            )
        sep = "&" if urlsplit(self.transfer_url).query else "?"
        body = {
            "legs": "aleg",
            "aleg_url": f"{self.transfer_url}{sep}{urlencode({'to': number})}",
            "aleg_method": self.transfer_method,
        }
        response = await self._request("POST", self._call_url(call_id), auth=self._auth, json=body)
        self._raise_for_status(response)


# --------------------------------------------------------------------------- Vonage


class VonageCallControl(CallControl):
    carrier = "vonage"

    def __init__(
        self,
        application_id: str,
        private_key: str,
        *,
        api_base: str = "https://api.nexmo.com",
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        token_ttl_s: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(api_base=api_base, client=client, timeout=timeout)
        self.application_id = application_id
        self._key = _load_rsa_private_key(private_key)
        self._ttl = token_ttl_s
        self._clock = clock

    def token(self) -> str:
        """A fresh RS256 JWT for the Voice API."""
        import jwt

        now = int(self._clock())
        claims = {"application_id": self.application_id, "iat": now, "jti": str(uuid.uuid4()), "exp": now + self._ttl}
        return jwt.encode(claims, self._key, algorithm="RS256")

    async def _put(self, call_id: str, body: dict[str, Any]) -> None:
        url = self._url("v1", "calls", self._call_id(call_id))
        headers = {"Authorization": f"Bearer {self.token()}", "Accept": "application/json"}
        response = await self._request("PUT", url, headers=headers, json=body)
        self._raise_for_status(response)

    async def hangup(self, call_id: str) -> None:
        await self._put(call_id, {"action": "hangup"})

    async def transfer(self, call_id: str, to_number: str) -> None:
        number = self._number(to_number).lstrip("+")  # Vonage writes E.164 without the plus
        ncco = [{"action": "connect", "endpoint": [{"type": "phone", "number": number}]}]
        await self._put(call_id, {"action": "transfer", "destination": {"type": "ncco", "ncco": ncco}})


# --------------------------------------------------------------------------- factory


def call_control_for(
    carrier: str,
    settings: Any,
    *,
    client: httpx.AsyncClient | None = None,
    timeout: float = 10.0,
    plivo_transfer_url: str | None = None,
) -> CallControl | None:
    """The carrier's call control from settings (the whole `Settings` or the carrier's group),
    or None when its credentials are not configured. A malformed Vonage key raises ConfigError."""
    name = carrier.strip().lower()
    group = getattr(settings, name, settings)
    common: dict[str, Any] = {"client": client, "timeout": timeout}
    if name == "twilio":
        sid, token = getattr(group, "account_sid", None), _secret(getattr(group, "auth_token", None))
        if not (sid and token):
            return None
        return TwilioCallControl(sid, token, api_base=group.api_base, **common)
    if name == "telnyx":
        key = _secret(getattr(group, "api_key", None))
        return TelnyxCallControl(key, api_base=group.api_base, **common) if key else None
    if name == "plivo":
        auth_id, token = getattr(group, "auth_id", None), _secret(getattr(group, "auth_token", None))
        if not (auth_id and token):
            return None
        return PlivoCallControl(auth_id, token, transfer_url=plivo_transfer_url, api_base=group.api_base, **common)
    if name == "vonage":
        app_id, key = getattr(group, "application_id", None), _secret(getattr(group, "private_key", None))
        if not (app_id and key):
            return None
        return VonageCallControl(app_id, key, api_base=group.api_base, **common)
    raise ValueError(f"unknown carrier {carrier!r} (expected twilio, telnyx, plivo or vonage)")


# --------------------------------------------------------------------------- helpers


def _segment(value: str) -> str:
    # Path segments keep RFC 3986 pchar characters (Telnyx ids look like "v3:abc-_"), nothing else;
    # "." and ".." would be read as dot-segments, so they are escaped too.
    if value.strip(".") == "":
        return value.replace(".", "%2E")
    return quote(value, safe=":@-._~!$&'()*+,;=")


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return text or None


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError):
        return None


def _error_codes(response: httpx.Response) -> set[str]:
    data = _json(response)
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return set()
    return {str(e.get("code")) for e in errors if isinstance(e, dict) and e.get("code") is not None}


def _carrier_message(response: httpx.Response) -> str:
    """The carrier's own error text: Twilio `message`, Telnyx `errors[].detail|title`, Plivo
    `error`, Vonage `title`/`detail` (RFC 7807); else the start of the body."""
    data = _json(response)
    parts: list[str] = []
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list):
            for err in errors[:3]:
                if isinstance(err, dict):
                    text = err.get("detail") or err.get("title")
                    code = err.get("code")
                    if text:
                        parts.append(f"{text} ({code})" if code else str(text))
        for key in ("message", "error", "title", "detail", "error_title"):
            value = data.get(key)
            if isinstance(value, str) and value and value not in parts:
                parts.append(value)
            elif isinstance(value, dict):
                parts.append(json.dumps(value)[:200])
        code = data.get("code")
        if parts and isinstance(code, (int, str)) and str(code) not in " ".join(parts):
            parts[0] = f"{parts[0]} (code {code})"
    if parts:
        return "; ".join(parts)[:500]
    text = response.text.strip().replace("\n", " ")
    return text[:200] or (response.reason_phrase or "no details")


def _load_rsa_private_key(private_key: str) -> Any:
    text = private_key.strip()
    if not text.startswith("-----BEGIN"):
        path = os.path.expanduser(text)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"vonage: cannot read the private key file {path}: {e.strerror}") from None
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
        import jwt  # noqa: F401 - fail here, at configuration time, if missing
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "Vonage call control needs the 'pyjwt' and 'cryptography' packages", hint="pip install 'pyjwt[crypto]'"
        ) from None
    try:
        key = serialization.load_pem_private_key(text.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise ConfigError("vonage: the private key is not an unencrypted PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise ConfigError("vonage: the application private key must be an RSA key (RS256)")
    return key
