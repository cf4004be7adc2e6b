"""`python tests/store_server.py PORT`: the real Moksori app (`create_app`) with fast fake models,
served by uvicorn with its lifespan (so the store migrates, opens and closes as in `moksori
serve`). Settings come from the environment (MOKSORI_STORE_URL, MOKSORI_API_KEYS, ...)."""

from __future__ import annotations

import sys


def main(port: int) -> None:
    import uvicorn

    from moksori.server.app import create_app
    from moksori.settings import load_settings
    from moksori.testing.fakes import fake_stack

    app = create_app(load_settings(), fake_stack())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", ws="websockets-sansio")


if __name__ == "__main__":
    main(int(sys.argv[1]))
