"""Brains: what turns the user's audio into the agent's reply.

Today's STT -> LLM -> TTS pipeline lives in `moksori.engine`; `moksori.brains.realtime` is the
client of a speech-to-speech upstream (OpenAI Realtime GA, Azure Voice Live, another Moksori).
"""
