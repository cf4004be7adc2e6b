"""WebRTC transport for the Realtime API: a peer connection per call, feeding the same
`RealtimeConnection` as the WebSocket.

    sdp.py      check an offer, keep only the ICE candidates we may use (pure)
    ice.py      which host addresses a call offers (aioice has no per-connection setting), why
                its TURN relay failed, which candidate pair it chose
    ice_servers.py  the STUN/TURN servers of both ends, coturn's time-limited credentials (pure)
    tracks.py   inbound track -> PCM frames; the outbound track that paces and flushes reply audio
    call.py     one call: peer connection, data channel `oai-events`, tracks, sidebands, watchdog
    routes.py   POST /v1/realtime/calls[/{id}/hangup], /v1/realtime/client_secrets, /session,
                and the sideband WebSocket (`/v1/realtime?call_id=`)

aiortc is imported only here (and lazily by the routes), never by the engine.
"""
