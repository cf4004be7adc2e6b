"""The browser voice app (static files served at /)."""
