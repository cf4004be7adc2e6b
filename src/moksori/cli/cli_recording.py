"""The command line's sessions into the store: `moksori chat` (voice) and `moksori converse`.

Both record like a server session (channel `cli`, tenant `default`): every turn as it happens,
anonymous without `--user`, nothing with `MOKSORI_STORE_URL=none`. A store that cannot start
(a dead database) gives one warning and the session runs unrecorded.

* `open_cli_recording(session, settings, user)`: a live session on the running loop (the voice
  chat): the user's history loads in the background, as on the server.
* `prepare_offline(settings, stack, cfg, user)` then `OfflineRecording.attach(session)`: for
  `moksori converse`, whose session may run on virtual time (`--fast`), where a database read
  cannot be awaited (the clock would jump past its timeout). The store is started and the user's
  history read *before*, on a real event loop; the session only hands records to the writer
  (a thread of its own), which `close()` flushes at the end.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from moksori.cli.ui import err_console
from moksori.recording import Recording, Who, fetch_history, record_session
from moksori.recording.live import HISTORY_TIMEOUT_S
from moksori.store import DEFAULT_TENANT, History, Store

CHANNEL = "cli"


def _warn(what: str, e: BaseException) -> None:
    err_console.print(f"[yellow]warning:[/] {what} ({type(e).__name__}: {' '.join(str(e).split())[:200]})",
                      highlight=False)


async def open_store(settings: Any) -> Store | None:
    """The configured store, started; None when storage is off or unavailable (with a warning)."""
    try:
        store = Store.from_settings(settings)
        if store is None:
            return None
        await store.start()
    except Exception as e:  # noqa: BLE001 - talk unrecorded rather than not at all
        _warn("conversations are not saved: the store is unavailable", e)
        return None
    return store


async def open_cli_recording(session: Any, settings: Any, user: str | None) -> Store | None:
    """Record a CLI voice session into the store (and load `user`'s history); the store, or None
    when storage is off or unavailable (the chat goes on, unrecorded, with a warning)."""
    store = await open_store(settings)
    if store is not None:
        record_session(session, store, Who(DEFAULT_TENANT, user, CHANNEL))
    return store


@dataclass
class OfflineRecording:
    store: Store
    who: Who
    history: History | None
    recording: Recording | None = None

    def attach(self, session: Any) -> Recording:
        """Record `session` (any event loop, virtual time too), with the history read before."""
        self.recording = record_session(session, self.store, self.who, history=self.history)
        return self.recording

    def close(self, timeout_s: float = 10.0) -> bool:
        """Write what is queued (for up to `timeout_s`) and stop the store. False if records were lost."""
        written = self.store.writer.flush_sync(timeout_s)
        asyncio.run(self.store.close(timeout_s))
        return written


def prepare_offline(settings: Any, stack: Any, cfg: Any, user: str | None,
                    metadata: dict[str, str] | None = None) -> OfflineRecording | None:
    """Start the store and read `user`'s history on a real event loop (see the module's doc)."""
    from moksori.engine.context import default_budget, token_counter

    who = Who(DEFAULT_TENANT, user, CHANNEL, load_history=False, metadata=metadata)

    async def main() -> OfflineRecording | None:
        store = await open_store(settings)
        if store is None:
            return None
        history = None
        if user is not None:
            budget = default_budget(settings.agent.context_tokens, stack.llm.caps.context_tokens, cfg.max_output_tokens)
            try:
                async with asyncio.timeout(HISTORY_TIMEOUT_S):
                    history = await fetch_history(store, who, budget, token_counter(stack.llm))
            except Exception as e:  # noqa: BLE001 - go on without it
                _warn(f"the history of {user} could not be loaded; going on without it", e)
            finally:
                await store.close_reads()
        return OfflineRecording(store, who, history)

    return asyncio.run(main())
