"""Text no encoder takes: NUL characters and lone UTF-16 surrogates.

Both arrive as valid JSON from any client (`"\\u0000"`, `"\\ud800"`: `json.loads` pairs
surrogates, so any left is unpaired). A lone surrogate makes every UTF-8 encode raise (a
database driver, an HMAC, a spool file); PostgreSQL's text cannot hold a NUL. One definition
for the places that refuse such text (ids, speech input) and the one that cleans it (the store);
`json_text` for events that echo a client's words.
"""

from __future__ import annotations

import json
import re
from typing import Any

_UNENCODABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> bool:
    """No NUL and no lone surrogate in `text`."""
    return _UNENCODABLE.search(text) is None


def encodable_text(text: str) -> str:
    """`text` with NULs dropped and lone surrogates replaced by U+FFFD (`text` itself if clean)."""
    if encodable(text):
        return text
    return _UNENCODABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", text)


def json_text(value: Any, **options: Any) -> str:
    """`json.dumps(value)` keeping non-ASCII characters as they are (UTF-8 is smaller than
    escapes), unless a lone surrogate would leave the text with no UTF-8 form: then every
    non-ASCII character is escaped, which any encoder takes and any JSON reader reads back the
    same. (`json.dumps` escapes NUL itself.)"""
    text = json.dumps(value, ensure_ascii=False, **options)
    return text if _SURROGATE.search(text) is None else json.dumps(value, **options)
