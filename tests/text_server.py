"""`python tests/text_server.py PORT`: the real Moksori app (`create_app`) served by uvicorn with its
lifespan (the store migrates, opens and closes as in `moksori serve`), with fast fake speech
models and the LLM the settings name (`build_llm`): with `MOKSORI_LLM_PROVIDER=openai` and
`MOKSORI_LLM_BASE_URL` at `tests/scripted_llm_server.py`, the stand-in for a smart model records
every prompt, so a test reads what a text session's agent was sent (its user's history first).
Settings come from the environment."""

from __future__ import annotations

import sys


def main(port: int) -> None:
    import uvicorn

    from moksori.providers.registry import build_llm
    from moksori.server.app import create_app
    from moksori.settings import load_settings
    from moksori.testing.fakes import fake_stack

    settings = load_settings()
    app = create_app(settings, fake_stack(llm=build_llm(settings)))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", ws="websockets-sansio")


if __name__ == "__main__":
    main(int(sys.argv[1]))
