"""Text no encoder takes: NUL characters and lone UTF-16 surrogates.

Both arrive as valid JSON from any client (`"\\u0000"`, `"\\ud800"`: `json.loads` pairs
surrogates, so any left is unpaired). A lone surrogate makes every UTF-8 encode raise (a
database driver, an HMAC, a spool file); PostgreSQL's text cannot hold a NUL. One definition
for the places that refuse such text (ids, speech input) and the ones that clean it (the store;
`surrogates_replaced` for a client's parsed JSON, whose words reach the LLM's tokenizer, a
remote model's request body and the moderation call); `json_text` for events that echo text.
"""

from __future__ import annotations

import json
import re
from typing import Any

_UNENCODABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# in JSON's source: an escape that may decode to a lone surrogate, or a surrogate as is
_SURROGATE_SOURCE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")


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


def surrogates_replaced(value: Any, source: str | None = None) -> Any:
    """Parsed JSON `value` with each lone surrogate in its strings (keys too) replaced by U+FFFD.
    `source` (the JSON text it was parsed from) lets clean text skip the walk: only an escape
    in the range D800-DFFF (or a surrogate in the text itself) can leave one. RecursionError
    past the nesting a parser takes."""
    if source is not None and _clean_source(source):
        return value
    if isinstance(value, str):
        return value if _SURROGATE.search(value) is None else _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [surrogates_replaced(v) for v in value]
    if isinstance(value, dict):
        return {surrogates_replaced(k): surrogates_replaced(v) for k, v in value.items()}
    return value


def _clean_source(source: str) -> bool:
    """No escape in the range D800-DFFF and no surrogate in JSON text `source`. Every audio
    append asks this of a few kB of base64: an ASCII text (a flag CPython keeps) holds no
    surrogate, and one without a `\\u` holds no escape, which a substring scan finds ~8x
    faster than the pattern (15 -> 2 us for a 40 ms append); the pattern only where either may be."""
    if source.isascii() and "\\u" not in source:
        return True
    return _SURROGATE_SOURCE.search(source) is None
