"""`python tests/drain_server.py PORT DRAIN_S`: the real app (`create_app`) with fast fake models,
served as `moksori serve` serves it (guarded sockets, the draining server), for the SIGTERM tests."""

from __future__ import annotations

import sys


def main(port: int, drain_s: float) -> None:
    import uvicorn

    from moksori.cli.serve_cmd import draining_server
    from moksori.server.app import create_app
    from moksori.server.sockets import guarded_protocols
    from moksori.settings import load_settings
    from moksori.testing.fakes import fake_stack

    app = create_app(load_settings(), fake_stack())
    state = app.state.moksori
    http, ws = guarded_protocols(state.sockets)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", http=http, ws=ws,
                            timeout_graceful_shutdown=5)
    try:
        draining_server(config, state, drain_s).run()
    except KeyboardInterrupt:  # SIGINT re-raised after the shutdown: `moksori serve` prints "interrupted"
        print("interrupted", file=sys.stderr)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
