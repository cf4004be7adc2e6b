"""Live sessions into the store: a recorder on each session's timeline, and the user's history
loaded into the session as it starts. The engine never imports this package (nor the store);
every entry point calls `server/recording_hooks.py` (or `record_session` directly, the CLI)."""

from moksori.recording.live import Recording, Who, fetch_history, history_items, models_of, record_session
from moksori.recording.recorder import Models, Recorder, RecorderStats

__all__ = ["Recorder", "RecorderStats", "Models", "Recording", "Who", "record_session", "fetch_history", "history_items", "models_of"]
