"""The body of a WebRTC offer sent as multipart (`sdp` and `session` parts), and the session
kinds a call or an ephemeral key may start."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from moksori.errors import ProtocolError
from moksori.text.unencodable import surrogates_replaced


def session_kind(session: dict[str, Any]) -> str:
    """`session.type`: "realtime" (the default) or "transcription". Raises ProtocolError."""
    kind = session.get("type", "realtime")
    if kind not in ("realtime", "transcription"):
        raise ProtocolError("session.type must be 'realtime' or 'transcription'", code="invalid_value",
                            param="session.type")
    return str(kind)


async def multipart_offer(request: Request, body: bytes) -> tuple[str, dict[str, Any] | None]:
    """The `sdp` and `session` parts of a multipart body (already read, within the limit)."""
    request._body = body  # noqa: SLF001 - Starlette reads a cached body instead of the (consumed) stream
    try:
        form = await request.form(max_files=4, max_fields=8)
    except Exception as e:  # noqa: BLE001 - python-multipart's errors: the body's fault
        raise ProtocolError(f"malformed multipart body: {e}"[:200], code="invalid_request_error") from None
    try:
        sdp = await _part_text(form.get("sdp"))
        if sdp is None:
            raise ProtocolError("the multipart body has no 'sdp' part", code="missing_required_parameter", param="sdp")
        try:
            raw = await _part_text(form.get("session"))
        except UnicodeDecodeError:  # (it was told as the offer's fault)
            raise ProtocolError("the 'session' part is not UTF-8 text", code="invalid_json", param="session") from None
    finally:
        await form.close()
    if raw is None:
        return sdp, None
    try:
        session = surrogates_replaced(json.loads(raw), raw)
    except (ValueError, RecursionError):
        raise ProtocolError("the 'session' part is not valid JSON", code="invalid_json", param="session") from None
    if not isinstance(session, dict):
        raise ProtocolError("the 'session' part must be a JSON object", code="invalid_type", param="session")
    session_kind(session)  # as a minted key's session
    return sdp, session


async def _part_text(part: Any) -> str | None:
    if part is None:
        return None
    if isinstance(part, str):
        return part
    data = await part.read()  # an UploadFile (a part sent with a filename)
    return data.decode("utf-8")
