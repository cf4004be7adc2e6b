"""The one place every server entry point goes through to record a live session.

* `user_of(headers, query)`: the caller's user id, from `?user=` or `X-Moksori-User`
  (`InvalidUser` for a malformed one: the route refuses the session with a clear reason);
* `wants_history(query)`: `?moksori_history=0` starts a conversation without the earlier ones in
  the agent's context (the browser app's "New conversation"); they stay stored;
* `record(state, session, who)`: record the session into the server's store, if it has one
  (`MOKSORI_STORE_URL=none`, or a bad store URL: nothing is recorded, the session runs the same).
  A database that was down when the server started still records: its records queue in the
  writer (in order, up to `MOKSORI_STORE_MAX_PENDING`) and are written once it answers;
* `store_metrics(state)`: the `/metrics` lines of the recorder and the store's writer.

A key (tenant) never sees another key's users: the tenant is `store.tenant_id(api key)` (or
the key that minted an ephemeral key), and users live inside their tenant.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from moksori.engine.session import Session
from moksori.recording import Recording, Who, record_session
from moksori.store import DEFAULT_TENANT, Store, tenant_id, valid_user_id

log = logging.getLogger("moksori.recording")

__all__ = ["InvalidUser", "user_of", "wants_history", "tenant_of", "record", "recording_store", "phone_who", "store_metrics"]

USER_HEADER = "x-moksori-user"
KINDS = ("conversation", "user_turn", "reply", "progress", "tool_call", "tool_result", "heard", "usage", "summary")


class InvalidUser(ValueError):
    pass


def user_of(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """`?user=ID` or the `X-Moksori-User` header (the query wins); None: anonymous."""
    raw = query.get("user")
    if raw is None:
        raw = {k.lower(): v for k, v in headers.items()}.get(USER_HEADER)
    if raw is None or raw == "":
        return None
    raw = raw.strip()
    if not valid_user_id(raw):
        raise InvalidUser("invalid user id: use 1-255 letters, digits and _ . @ : + - = /")
    return raw


def wants_history(query: Mapping[str, str]) -> bool:
    return query.get("moksori_history", "1").lower() not in ("0", "false", "off", "none")


def tenant_of(state: Any, key: str | None, grant: Any = None) -> str:
    """The tenant of a request: its API key's (an ephemeral key: the minting key's); one tenant
    (`default`) on a server without keys."""
    if grant is not None and getattr(grant, "tenant", None):
        return str(grant.tenant)
    if not state.auth_required:
        return DEFAULT_TENANT
    return tenant_id(key)


def _counts(state: Any) -> Counter[str]:
    counts = getattr(state, "recorded", None)
    if counts is None:
        counts = state.recorded = Counter()
    return counts


def recording_store(state: Any) -> Store | None:
    """The store sessions record into: the live one, or one still waiting for its database."""
    return getattr(state, "store", None) or getattr(state, "store_pending", None)


def record(state: Any, session: Session, who: Who) -> Recording | None:
    """Record `session` into the server's store (None when storage is off or unusable)."""
    store = recording_store(state)
    if store is None:
        return None
    counts = _counts(state)
    try:
        return record_session(session, store, who, on_record=lambda kind: counts.update((kind,)))
    except Exception:
        log.exception("session %s: cannot record it", session.id)
        return None


def phone_tenant(state: Any) -> str:
    """Phone calls come with no API key: they belong to `telephony.owner_key`'s tenant, else to
    the only configured key's, else (no keys, or several and no owner named) to `default`."""
    owner = state.settings.telephony.owner_key
    if owner is not None and owner.get_secret_value():
        return tenant_id(owner.get_secret_value())
    keys = getattr(state, "keys", None) or []
    return tenant_id(keys[0]) if len(keys) == 1 else DEFAULT_TENANT


def phone_who(state: Any, from_number: str | None, carrier: str) -> Who:
    """A phone call: its caller's number, hashed (`tel:` + HMAC), is the user."""
    store = recording_store(state)
    # decimal digits, as the hash reads them (a superscript "²" is a digit to isdigit(), not to \d)
    user = store.phone_user_id(from_number) if store is not None and from_number and \
        any(ch.isdecimal() for ch in from_number) else None
    return Who(phone_tenant(state), user, "phone", metadata={"carrier": carrier})


def store_metrics(state: Any) -> str:
    """Counters of what live sessions recorded and of the store's writer."""
    counts = _counts(state)
    lines = ["# HELP moksori_recorded_total Records live sessions handed to the store, by kind.",
             "# TYPE moksori_recorded_total counter"]
    lines += [f'moksori_recorded_total{{kind="{k}"}} {counts.get(k, 0)}' for k in KINDS]
    store = recording_store(state)
    lines += ["# HELP moksori_store_up 1 while the store takes writes; 0 while they fail (records queue) or "
              "storage is off/unavailable.", "# TYPE moksori_store_up gauge"]
    if store is None:
        lines.append("moksori_store_up 0")
        return "\n".join(lines) + "\n"
    w = store.writer
    st = w.stats
    lines += [
        f"moksori_store_up {int(store.started and not w.failing)}",
        "# TYPE moksori_store_written_total counter", f"moksori_store_written_total {st.written}",
        "# HELP moksori_store_write_failures_total Failed write attempts (each batch is retried).",
        "# TYPE moksori_store_write_failures_total counter", f"moksori_store_write_failures_total {st.failures}",
        "# TYPE moksori_store_dropped_total counter",
        f'moksori_store_dropped_total{{reason="buffer_full"}} {st.dropped_full}',
        f'moksori_store_dropped_total{{reason="rejected"}} {st.dropped_bad}',
        "# TYPE moksori_store_pending gauge", f"moksori_store_pending {w.pending}",
    ]
    return "\n".join(lines) + "\n"
