"""`python tests/stale_server.py PORT DRAIN_S`: the real app (`create_app`) served as `moksori
serve` serves it (guarded sockets, the draining server), with fast fake models whose LLM tells
what it was sent: a stand-in for a smart model, named as such. Its reply to a user turn that
says "long" is `LONG_REPLY` (about twenty seconds of speech, to kill a server mid-reply); to
any other turn, `Context: ` and the user messages of its prompt joined by ` | ` (so a test reads
which earlier turns the agent had). Settings come from the environment."""

from __future__ import annotations

import sys

LONG_REPLY = ("Once upon a time there was a small voice agent that told very long stories to anyone who "
              "asked, and it kept talking about rivers and mountains and the people who lived between them, "
              "until somebody finally pulled the plug on the machine it was running on.")


def reply(request) -> str:
    users = [m.content for m in request.messages if m.role == "user"]
    if users and "long" in users[-1].lower():
        return LONG_REPLY
    return "Context: " + " | ".join(users)


def main(port: int, drain_s: float) -> None:
    import logging

    import uvicorn

    from moksori.cli.serve_cmd import draining_server
    from moksori.server.app import create_app
    from moksori.server.sockets import guarded_protocols
    from moksori.settings import load_settings
    from moksori.testing.fakes import ScriptedLLM, fake_stack

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("moksori").setLevel(logging.INFO)
    app = create_app(load_settings(), fake_stack(llm=ScriptedLLM(reply, token_delay_s=0.005)))
    state = app.state.moksori
    http, ws = guarded_protocols(state.sockets)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", http=http, ws=ws,
                            timeout_graceful_shutdown=5)
    draining_server(config, state, drain_s).run()


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
