"""Webhook signatures and media-stream tokens. Pure functions: no I/O, no clock (pass `now`).

- Twilio `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, URL + each POST param's key+value,
  keys sorted)). Repeated keys contribute each (sorted, distinct) value, as Twilio's own
  `RequestValidator` does; a URL is accepted with or without its default port, because Twilio
  signs either form. JSON bodies are covered by a `bodySHA256` query parameter instead.
- Stream tokens: our own HMAC-SHA256 token binding a carrier and a call id to an expiry. The
  webhook hands it to the carrier as a stream parameter (a TwiML `<Parameter>`), and the media
  socket refuses a `start` whose token does not check out (or was used before: the server
  remembers used tokens until they expire), so strangers cannot open a media stream.
- Telnyx: Ed25519 over `"{telnyx-timestamp}|{raw body}"`, base64 in `telnyx-signature-ed25519`,
  checked with the account's base64 public key; timestamps older than `tolerance_s` are replays.
  TeXML requests are signed the same way; a GET's body is empty, so its signature covers
  `"{timestamp}|"` only, not its query (the TeXML answer route says what that means).
- Plivo V3: base64(HMAC-SHA256(auth token, signed URL + "." + nonce)) in `X-Plivo-Signature-V3`
  (possibly several, comma-separated), nonce in `X-Plivo-Signature-V3-Nonce`. The signed URL is
  the URL without query, then for GET `?` + sorted `k=v&k=v` of query and params, and for POST
  `?` + sorted query + (`.` if both exist) + sorted `kv` concatenation of the POST params.
- Vonage signed webhooks: `Authorization: Bearer <JWT>`, HS256 with the account signature
  secret; the `payload_hash` claim is the SHA-256 hex of the request body.

Every `verify_*`/`check_*` returns False for a bad or malformed signature and compares in
constant time; only a broken *configuration* (an unusable public key) raises `ConfigError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias
from urllib.parse import parse_qs, urlsplit, urlunsplit

from moksori.errors import ConfigError

Params: TypeAlias = Mapping[str, str] | Mapping[str, Sequence[str]] | Iterable[tuple[str, str]]

# --------------------------------------------------------------------------- Twilio


def twilio_signature(auth_token: str, url: str, params: Params | None = None) -> str:
    """The `X-Twilio-Signature` Twilio sends for a request to `url` with form `params`."""
    data = url
    grouped = _group(params)
    for key in sorted(grouped):
        for value in sorted(set(grouped[key])):
            data += key + value
    mac = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def verify_twilio(
    auth_token: str,
    url: str,
    params: Params | None,
    signature: str | None,
    *,
    body: str | bytes | None = None,
) -> bool:
    """Does `signature` (the X-Twilio-Signature header) match this request?

    For form posts pass the POST params. For JSON posts pass `body` (the raw request body): the
    URL then carries `bodySHA256`, which must match, and the params are not signed.
    """
    if not isinstance(signature, str) or not signature:
        return False
    query = parse_qs(urlsplit(url).query)
    if body is not None and "bodySHA256" in query:
        raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        if not _same(hashlib.sha256(raw).hexdigest(), query["bodySHA256"][0]):
            return False
        params = None
    ok = False
    for candidate in _port_variants(url):
        ok |= _same(twilio_signature(auth_token, candidate, params), signature)
    return ok


def _port_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return [url]
    if port is not None:
        return [url, urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0]))]
    default = {"https": 443, "http": 80, "wss": 443, "ws": 80}.get(parts.scheme)
    if default is None or not parts.netloc:
        return [url]
    return [url, urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}"))]


# --------------------------------------------------------------------------- stream tokens

_TOKEN_VERSION = "v2"  # v2 binds the carrier too: a Twilio token does not open a Telnyx stream


def make_stream_token(secret: bytes, call_id: str, *, carrier: str, now: int, ttl_s: int = 600) -> str:
    """A token that lets the media stream of `call_id` on `carrier` ("twilio", "telnyx", "plivo",
    "vonage") start until `now + ttl_s` (epoch seconds). The server accepts it for one stream."""
    if not secret:
        raise ValueError("stream tokens need a non-empty secret")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    if not carrier:
        raise ValueError("stream tokens are made for one carrier")
    expires = int(now) + int(ttl_s)
    return f"{_TOKEN_VERSION}.{expires}.{_token_mac(secret, carrier, call_id, expires)}"


def check_stream_token(secret: bytes, token: str | None, call_id: str, *, carrier: str, now: int) -> bool:
    """Was `token` made with `secret` for `call_id` on `carrier`, and is it unexpired at `now`?
    (That it is used once is the server's job: `stream_token_expiry` says how long to remember it.)"""
    if not secret or not isinstance(token, str) or not isinstance(call_id, str) or not carrier:
        return False
    try:
        call_id.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates ("\ud800" in the JSON): no token is made for such an id
        return False
    expires = stream_token_expiry(token)
    if expires is None:
        return False
    good = _same(_token_mac(secret, carrier, call_id, expires), token.split(".")[2])
    return good and now <= expires


def stream_token_expiry(token: str) -> int | None:
    """The expiry (epoch seconds) written in a well-formed token, else None. Not a check."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3 or parts[0] != _TOKEN_VERSION:
        return None
    expires_text = parts[1]
    if not (expires_text.isascii() and expires_text.isdigit()) or len(expires_text) > 12:
        return None
    return int(expires_text)


def _token_mac(secret: bytes, carrier: str, call_id: str, expires: int) -> str:
    msg = b"moksori-stream\x00" + carrier.encode("utf-8") + b"\x00" + call_id.encode("utf-8") + b"\x00" + \
        str(expires).encode("ascii")
    digest = hmac.new(bytes(secret), msg, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


# --------------------------------------------------------------------------- Telnyx

TELNYX_SIGNATURE_HEADER = "telnyx-signature-ed25519"
TELNYX_TIMESTAMP_HEADER = "telnyx-timestamp"


def verify_telnyx(
    public_key: str | bytes,
    payload: str | bytes,
    signature: str | None,
    timestamp: str | int | None,
    *,
    now: int,
    tolerance_s: int = 300,
) -> bool:
    """Check a Telnyx webhook: Ed25519 over "timestamp|payload" with the account public key.

    `public_key` is the base64 key from the Telnyx portal (raw 32 bytes), raw bytes, or PEM.
    `payload` must be the exact raw request body.
    """
    key = telnyx_public_key(public_key)
    if signature is None or timestamp is None:
        return False
    ts_text = str(timestamp).strip()
    if not (ts_text.isascii() and ts_text.isdigit()) or len(ts_text) > 12:
        return False
    if abs(int(now) - int(ts_text)) > tolerance_s:
        return False
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    body = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(sig, ts_text.encode("ascii") + b"|" + body)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_telnyx_request(
    public_key: str | bytes, body: str | bytes, headers: Mapping[str, str], *, now: int, tolerance_s: int = 300
) -> bool:
    """`verify_telnyx` reading the two Telnyx headers from `headers` (any letter case)."""
    lower = {k.lower(): v for k, v in headers.items()}
    return verify_telnyx(
        public_key,
        body,
        lower.get(TELNYX_SIGNATURE_HEADER),
        lower.get(TELNYX_TIMESTAMP_HEADER),
        now=now,
        tolerance_s=tolerance_s,
    )


def telnyx_public_key(public_key: str | bytes) -> Any:
    """The Ed25519 public key of base64 text (the portal's form), raw bytes or PEM; `ConfigError`
    when it is none of these (or `cryptography` is missing)."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("Telnyx signature checks need the 'cryptography' package", hint="pip install cryptography") from None
    try:
        if isinstance(public_key, str):
            text = public_key.strip()
            if text.startswith("-----BEGIN"):
                key = serialization.load_pem_public_key(text.encode("ascii"))
                if not isinstance(key, Ed25519PublicKey):
                    raise ValueError("not an Ed25519 key")
                return key
            raw = base64.b64decode(text, validate=True)
        else:
            raw = bytes(public_key)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError, binascii.Error):
        raise ConfigError("the Telnyx public key is not a base64 Ed25519 public key") from None


# --------------------------------------------------------------------------- Plivo V3

PLIVO_SIGNATURE_HEADER = "X-Plivo-Signature-V3"
PLIVO_NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"


def plivo_signature_v3(
    auth_token: str, url: str, nonce: str, params: Params | None = None, *, method: str = "POST"
) -> str:
    """The `X-Plivo-Signature-V3` Plivo sends for a `method` request to `url` with `params`."""
    signed = _plivo_signed_url(url, _group(params), method.upper())
    mac = hmac.new(auth_token.encode("utf-8"), f"{signed}.{nonce}".encode("utf-8"), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def verify_plivo_v3(
    auth_token: str,
    url: str,
    nonce: str | None,
    signature: str | None,
    params: Params | None = None,
    *,
    method: str = "POST",
) -> bool:
    """Does any signature in the (comma-separated) `X-Plivo-Signature-V3` header match?"""
    if not isinstance(signature, str) or not isinstance(nonce, str) or not signature:
        return False
    expected = plivo_signature_v3(auth_token, url, nonce, params, method=method)
    ok = False
    for candidate in signature.split(","):
        ok |= _same(expected, candidate.strip())
    return ok


def _plivo_signed_url(url: str, params: dict[str, list[str]], method: str) -> str:
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    query = {k: list(v) for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    if method == "GET":
        merged = {**params, **query}  # the URL's own query wins, as in Plivo's reference code
        text = _plivo_query(merged)
        return f"{base}?{text}" if text else base
    text = _plivo_query(query)
    if text or params:
        base = f"{base}?{text}"
    if text and params:
        base += "."
    return base + "".join(key + value for key in sorted(params) for value in sorted(params[key]))


def _plivo_query(params: dict[str, list[str]]) -> str:
    return "&".join(f"{key}={value}" for key in sorted(params) for value in sorted(params[key]))


# --------------------------------------------------------------------------- Vonage


def verify_vonage(
    signature_secret: str,
    authorization: str | None,
    *,
    body: str | bytes | None = None,
    now: int | None = None,
    max_age_s: int | None = None,
) -> bool:
    """Check a Vonage signed webhook: the Authorization header's HS256 JWT and, when `body` is
    given, its `payload_hash` claim. With `now` and `max_age_s`, an older `iat` is rejected."""
    return vonage_claims(signature_secret, authorization, body=body, now=now, max_age_s=max_age_s) is not None


def vonage_claims(
    signature_secret: str,
    authorization: str | None,
    *,
    body: str | bytes | None = None,
    now: int | None = None,
    max_age_s: int | None = None,
) -> dict[str, Any] | None:
    """`verify_vonage`, giving the checked JWT's claims (e.g. `jti`, `iat`), or None."""
    if not isinstance(authorization, str) or not authorization.strip():
        return None
    token = authorization.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    jwt = _import_jwt()
    try:
        claims = jwt.decode(
            token,
            signature_secret,
            algorithms=["HS256"],
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False},
        )
    except jwt.PyJWTError:
        return None
    if not isinstance(claims, dict):
        return None
    if max_age_s is not None and now is not None:
        iat = claims.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, (int, float)) or not -60 <= now - iat <= max_age_s:
            return None
    if body is not None:
        raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        claimed = claims.get("payload_hash")
        if not isinstance(claimed, str) or not _same(hashlib.sha256(raw).hexdigest(), claimed.lower()):
            return None
    return claims


def _import_jwt() -> Any:
    try:
        import jwt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("Vonage signatures need the 'pyjwt' package", hint="pip install 'pyjwt[crypto]'") from None
    return jwt


# --------------------------------------------------------------------------- helpers


def _group(params: Params | None) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    if params is None:
        return grouped
    items = params.items() if isinstance(params, Mapping) else params
    for key, value in items:
        values = [value] if isinstance(value, str) else list(value)
        grouped.setdefault(str(key), []).extend(str(v) for v in values)
    return grouped


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
