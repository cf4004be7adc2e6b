"""Moksori (목소리): a self-hostable real-time voice agent server."""

__version__ = "0.1.0"
