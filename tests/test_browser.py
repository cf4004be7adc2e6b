"""The browser app (`/`) in headless Debian Chromium against a real `moksori serve`.

Recipe: docs/PROTOCOLS.md "Browser tests (verified recipe)". What we saw with Chromium 156
and Playwright 1.65, beyond the recipe:

* Playwright refuses `--user-data-dir` in `args`; the fresh profile is passed through
  `launch_persistent_context(<tmp dir>)` instead, which is the same thing.
* Playwright adds `--mute-audio` by default; we drop it so that audio output runs as it would
  for a person (the AudioContext renders either way, but we test the real path).
* The page's AudioContext runs at 44100 Hz here (Chromium's fake output device), so the
  capture worklet resamples 44.1 kHz -> 24 kHz and the playback worklet 24 kHz -> 44.1 kHz;
  neither rate is hard-coded in the app.
* With `%noloop` and 6 s of silence after the speech, the agent answers while the fake mic is
  silent, so nothing barges in; the reply is played to its end.
* The app talks WebRTC by default (the fake mic is its audio track, the reply plays from the
  remote track through an <audio> element and a measuring tap); `?webrtc=fail` makes that fail
  for real (a broken offer, refused with 400) and the app falls back to the WebSocket, where the
  reply goes through the playback worklet. Chromium needs `--allow-loopback-in-peer-connection`
  to use the server's 127.0.0.1 candidate.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from browser_tools import chromium, chromium_available, moksori_server, write_mic_wav
from speech import prepared_data_dir, requires_speech, utt

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    requires_speech,
    pytest.mark.skipif(not chromium_available(), reason="needs /usr/bin/chromium and the playwright package"),
]

TIMEOUT_MS = 60_000

# Records every value the state element shows (the DOM, not just the app's own counters).
WATCH_STATE = """
(() => {
  window.__states = [];
  const watch = () => {
    const el = document.querySelector('[data-testid="state"]');
    if (!el) return;
    window.__states.push(el.dataset.state);
    new MutationObserver(() => window.__states.push(el.dataset.state))
      .observe(el, { attributes: true, attributeFilter: ["data-state"] });
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", watch);
  else watch();
})();
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = prepared_data_dir(tmp_path_factory)
    with moksori_server(data_dir) as srv:
        yield srv


def _sessions(server) -> int:
    try:
        with urllib.request.urlopen(server.url + "/ready", timeout=5) as resp:
            return int(json.load(resp)["sessions"])
    except urllib.error.HTTPError as e:  # 503 while shedding load: the same report
        return int(json.load(e)["sessions"])


def _wait_sessions(server, n: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _sessions(server) != n:
        assert time.monotonic() < deadline, f"server still has {_sessions(server)} sessions, expected {n}"
        time.sleep(0.1)


def _page(ctx, problems: list[str]):
    page = ctx.new_page()
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status} {r.url}"))
    return page


def test_spoken_turn_transcript_reply_audio_and_latency(server, tmp_path):
    """Speak into the fake mic; the app shows the transcript, plays the reply, draws the latency."""
    from playwright.sync_api import expect

    wav = write_mic_wav(tmp_path / "mic.wav", utt("en_028").path, lead_s=1.0, tail_s=6.0)
    problems: list[str] = []
    with chromium(wav) as ctx:
        ctx.add_init_script(WATCH_STATE)
        page = _page(ctx, problems)
        page.goto(server.url + "/?raw=1")
        expect(page.get_by_test_id("state")).to_have_attribute("data-state", "off")
        page.get_by_test_id("start").click()
        expect(page.get_by_test_id("stop")).to_be_visible()

        # the final user line (not the italic partial) has the words
        final_user = page.locator('[data-testid="transcript-user"] .line.final')
        expect(final_user.first).to_contain_text("thousand", ignore_case=True, timeout=TIMEOUT_MS)

        # a latency row with a plausible headline number, drawn as a stacked bar
        row = page.get_by_test_id("latency-turn").first
        expect(row).to_be_visible(timeout=TIMEOUT_MS)
        ms = int(row.get_attribute("data-ms"))
        assert 0 < ms < 10_000, ms
        assert row.locator(".seg").count() >= 2
        assert row.locator(".marker").count() == 1

        # reply audio arrived and went through the playback worklet (wait for >= 0.5 s heard)
        page.wait_for_function("() => window.moksori.playedSamples >= 12000", timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("transcript-agent").locator(".line").first).not_to_be_empty(timeout=TIMEOUT_MS)
        m = page.evaluate("""() => { const m = window.moksori; return {
            receivedAudioSamples: m.receivedAudioSamples, playedSamples: m.playedSamples, sampleRate: m.sampleRate,
            sentAudioSamples: m.sentAudioSamples, levelMax: m.levelMax, turns: m.turns, transport: m.transport,
            events: m.events, webrtcError: m.webrtcError }; }""")
        # over WebRTC: the reply came on the track, its playback reported by the server's outbound track
        assert m["transport"] == "webrtc", m["webrtcError"]
        assert m["events"].get("output_audio_buffer.started", 0) >= 1
        assert m["events"].get("response.output_audio.delta", 0) == 0
        assert m["receivedAudioSamples"] > 0 and m["playedSamples"] > 0
        assert m["playedSamples"] <= m["receivedAudioSamples"]
        assert m["sampleRate"] > 0 and m["sentAudioSamples"] > 24_000 * 3  # > 3 s of mic audio sent
        assert m["levelMax"] > 0.01, "the level meter never saw the speech"
        assert m["turns"] and m["turns"][0]["ms"] == ms

        # the state element went listening -> thinking/speaking
        states = page.evaluate("() => window.__states")
        assert "listening" in states, states
        after = states[states.index("listening"):]
        assert "thinking" in after or "speaking" in after, states

        # Stop closes the session on the server; Start opens a fresh one
        page.get_by_test_id("stop").click()
        expect(page.get_by_test_id("state")).to_have_attribute("data-state", "off")
        _wait_sessions(server, 0)
        page.get_by_test_id("start").click()
        page.wait_for_function("() => (window.moksori.events['session.created'] || 0) >= 2", timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("state")).not_to_have_attribute("data-state", "connecting")
        page.get_by_test_id("stop").click()
        _wait_sessions(server, 0)
    assert not problems, problems


def test_webrtc_failure_falls_back_to_the_websocket(server, tmp_path):
    """`?webrtc=fail` posts a broken offer: the server says 400, the app says so and speaks WebSocket."""
    from playwright.sync_api import expect

    wav = write_mic_wav(tmp_path / "mic.wav", utt("en_028").path, lead_s=1.0, tail_s=6.0)
    problems: list[str] = []
    with chromium(wav) as ctx:
        page = _page(ctx, problems)
        page.goto(server.url + "/?raw=1&webrtc=fail")
        page.get_by_test_id("start").click()
        expect(page.get_by_test_id("error")).to_contain_text("WebSocket", timeout=TIMEOUT_MS)
        final_user = page.locator('[data-testid="transcript-user"] .line.final')
        expect(final_user.first).to_contain_text("thousand", ignore_case=True, timeout=TIMEOUT_MS)
        page.wait_for_function("() => window.moksori.playedSamples >= 12000", timeout=TIMEOUT_MS)
        m = page.evaluate("() => ({transport: window.moksori.transport, err: window.moksori.webrtcError, "
                          "deltas: window.moksori.events['response.output_audio.delta'] || 0})")
        assert m["transport"] == "websocket" and "400" in m["err"], m
        assert m["deltas"] > 0
        page.get_by_test_id("stop").click()
        _wait_sessions(server, 0)
    # the refused offer is the only failed request, and it was the one we forced
    assert [p for p in problems if "/v1/realtime/calls" not in p] == [], problems


def test_phone_viewport_and_text_fallback(server):
    """390x844: every control fits without horizontal scrolling; typing gets a reply; errors toast."""
    from playwright.sync_api import expect

    problems: list[str] = []
    with chromium(None, viewport={"width": 390, "height": 844}) as ctx:
        page = _page(ctx, problems)
        page.goto(server.url + "/?raw=1")
        for tid in ("start", "new-conversation", "state", "level", "text-input", "text-send"):
            el = page.get_by_test_id(tid)
            expect(el).to_be_visible()
            box = el.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390 + 1, (tid, box)
        start_box = page.get_by_test_id("start").bounding_box()
        assert start_box["height"] >= 44, "touch target too small"

        def no_overflow() -> None:
            w, inner = page.evaluate("() => [document.scrollingElement.scrollWidth, window.innerWidth]")
            assert w <= inner + 1, (w, inner)

        no_overflow()
        page.get_by_test_id("text-input").fill("hello")
        page.get_by_test_id("text-send").click()
        expect(page.get_by_test_id("transcript-user")).to_contain_text("hello")
        agent = page.get_by_test_id("transcript-agent").locator(".line").first
        expect(agent).not_to_be_empty(timeout=TIMEOUT_MS)
        no_overflow()

        # a server error event shows in the toast
        page.evaluate("() => window.moksori.send({type: 'conversation.item.retrieve', item_id: 'item_missing'})")
        expect(page.get_by_test_id("error")).to_be_visible()
        expect(page.get_by_test_id("error")).to_contain_text("item_missing")
        page.get_by_test_id("stop").click()
        _wait_sessions(server, 0)
    assert not problems, problems


def test_the_page_keeps_a_user_id_and_starts_new_conversations(server):
    """The page's user id lives in localStorage and goes with every session (`?user=`), so its
    conversations are stored under it; "New conversation" starts the next one without the
    earlier ones in the agent's context (`moksori_history=0`) and keeps the same id."""
    from playwright.sync_api import expect

    problems: list[str] = []
    calls: list[str] = []
    with chromium(None) as ctx:
        page = _page(ctx, problems)
        page.on("request", lambda r: "/v1/realtime" in r.url and calls.append(r.url))
        page.goto(server.url + "/?raw=1")
        user = page.evaluate("() => window.moksori.user")
        assert user.startswith("web-") and page.evaluate("() => localStorage.getItem('moksori.user')") == user
        page.get_by_test_id("text-input").fill("My name is Minji.")
        page.get_by_test_id("text-send").click()
        agent = page.get_by_test_id("transcript-agent").locator(".line").first
        expect(agent).not_to_be_empty(timeout=TIMEOUT_MS)
        page.get_by_test_id("new-conversation").click()  # running: it reconnects, fresh
        page.wait_for_function("() => (window.moksori.events['session.created'] || 0) >= 2", timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("transcript-agent")).to_be_empty()
        page.get_by_test_id("text-input").fill("Hello again.")
        page.get_by_test_id("text-send").click()
        expect(page.get_by_test_id("transcript-agent").locator(".line").first).not_to_be_empty(timeout=TIMEOUT_MS)
        page.get_by_test_id("stop").click()
        _wait_sessions(server, 0)
        page.reload()
        assert page.evaluate("() => window.moksori.user") == user  # the same browser, the same user
    assert not problems, problems
    assert len(calls) == 2 and all(f"user={user}" in u for u in calls), calls
    assert "moksori_history=0" not in calls[0] and "moksori_history=0" in calls[1]
    with urllib.request.urlopen(f"{server.url}/v1/conversations?user={user}", timeout=10) as resp:
        convs = json.load(resp)["data"]
    assert len(convs) == 2 and all(c["metadata"]["channel"] == "webrtc" for c in convs)
    texts = []
    for c in convs:
        with urllib.request.urlopen(f"{server.url}/v1/conversations/{c['id']}/items?order=asc", timeout=10) as resp:
            texts.append([i["content"][0]["text"] for i in json.load(resp)["data"] if i["role"] == "user"])
    assert sorted(texts) == [["Hello again."], ["My name is Minji."]]


# ------------------------------------------------------------------ Stop while connecting, a lost
# network, failed WebRTC attempts, over-long typed text


def _ui(page) -> dict:
    return page.evaluate("""() => ({
        state: document.querySelector('[data-testid="state"]').dataset.state,
        start: !document.querySelector('#start').hidden, stop: !document.querySelector('#stop').hidden,
        transport: window.moksori.transport, errors: window.moksori.errors.slice(),
        typed: [...document.querySelectorAll('[data-testid="transcript-user"] .typed')].map((e) => e.textContent)})""")


@pytest.mark.parametrize("stop_after_ms", [50, 300, "burst", "sync-burst"])
def test_stop_while_connecting_leaves_no_session(server, tmp_path, stop_after_ms):
    """Stop pressed while the WebRTC attempt is under way cancels it: nothing stays open on the
    server, the page shows "off" with Start, and it never falls back to the WebSocket after Stop
    (also for ten Start/Stop clicks in a second, or in one task)."""
    from playwright.sync_api import expect

    wav = write_mic_wav(tmp_path / "mic.wav", utt("en_028").path, lead_s=1.0, tail_s=8.0)
    problems: list[str] = []
    sockets: list[str] = []
    with chromium(wav) as ctx:
        page = _page(ctx, problems)
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(server.url + "/?raw=1")
        if stop_after_ms == "burst":  # Start/Stop alternately, 100 ms apart, ending on Stop
            for i in range(10):
                page.evaluate(f"() => document.querySelector('#{'stop' if i % 2 else 'start'}').click()")
                time.sleep(0.1)
        elif stop_after_ms == "sync-burst":
            page.evaluate("() => { for (let i = 0; i < 10; i++) { document.querySelector('#start').click();"
                          " document.querySelector('#stop').click(); } }")
        else:
            page.evaluate(f"() => {{ document.querySelector('#start').click();"
                          f" setTimeout(() => document.querySelector('#stop').click(), {stop_after_ms}); }}")
        time.sleep(6)  # long enough for an attempt Stop did not cancel to connect, or to fall back
        ui = _ui(page)
        assert ui["state"] == "off" and ui["start"] and not ui["stop"], ui
        # no WebSocket fallback after Stop (a warm server may answer within 300 ms: then the page
        # was connected over WebRTC, `transport` says so, and Stop was an ordinary one)
        assert ui["transport"] in (None, "webrtc") and not sockets, (ui, sockets)
        assert ui["errors"] == [], ui
        _wait_sessions(server, 0, timeout_s=10)  # with the page still open
        # and a Start after all that works
        page.get_by_test_id("start").click()
        page.wait_for_function("() => window.moksori.transport === 'webrtc' && window.moksori.connected",
                               timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("stop")).to_be_visible()
        page.get_by_test_id("stop").click()
        _wait_sessions(server, 0)
    assert not problems, problems


def test_a_silent_network_drop_is_noticed(server):
    """The connection goes quiet without closing (a network that drops every packet): the page
    notices within ~20 s (its liveness probe gets no answer), says so and goes to "off", instead of
    showing the last state for ever. While the network works, the probe shows nothing."""
    import re

    from playwright.sync_api import expect

    problems: list[str] = []
    hole = {"on": False}
    with chromium(None) as ctx:
        page = _page(ctx, problems)

        def proxy(ws) -> None:  # the page's WebSocket, forwarded to the real server until the "drop"
            upstream = ws.connect_to_server()
            ws.on_message(lambda m: None if hole["on"] else upstream.send(m))
            upstream.on_message(lambda m: None if hole["on"] else ws.send(m))

        page.route_web_socket(re.compile(r".*/v1/realtime.*"), proxy)
        page.goto(server.url + "/?raw=1&transport=websocket")
        page.get_by_test_id("text-input").fill("hello")
        page.get_by_test_id("text-send").click()
        expect(page.get_by_test_id("transcript-agent").locator(".line").first).not_to_be_empty(timeout=TIMEOUT_MS)
        page.wait_for_function("() => window.moksori.state === 'ready'", timeout=TIMEOUT_MS)
        # a quiet, healthy session: the probe's answers arrive, nothing is reported (wait_for_timeout,
        # not time.sleep: the sync API runs the proxy's handlers only while it is called)
        page.wait_for_timeout(20_000)
        ui = _ui(page)
        assert ui["state"] == "ready" and ui["stop"] and ui["errors"] == [], (ui["errors"], ui)
        assert page.evaluate("() => window.moksori.events.error || 0") == 0
        hole["on"] = True
        t0 = time.monotonic()
        page.wait_for_function("() => window.moksori.state === 'off'", timeout=40_000)
        assert time.monotonic() - t0 < 30
        ui = _ui(page)
        assert ui["start"] and not ui["stop"], ui
        assert any("lost" in e.lower() for e in ui["errors"]), ui
    _wait_sessions(server, 0, timeout_s=20)
    assert not problems, problems


def test_a_failed_webrtc_attempt_leaves_no_unhandled_rejection(server, tmp_path):
    """`?webrtc=fail`: after the fallback the abandoned attempt's 10 s data-channel timer must not
    surface as an unhandled rejection."""
    from playwright.sync_api import expect

    problems: list[str] = []
    with chromium(None) as ctx:
        page = _page(ctx, problems)
        page.goto(server.url + "/?raw=1&webrtc=fail")
        page.get_by_test_id("text-input").fill("hello")
        page.get_by_test_id("text-send").click()
        expect(page.get_by_test_id("error")).to_contain_text("WebSocket", timeout=TIMEOUT_MS)
        time.sleep(12)  # past the 10 s data-channel timer
        assert page.evaluate("() => window.moksori.transport") == "websocket"
        page.get_by_test_id("stop").click()
        _wait_sessions(server, 0)
    assert [p for p in problems if "/v1/realtime/calls" not in p] == [], problems


@pytest.mark.parametrize("transport", ["webrtc", "websocket"])
def test_typed_text_over_the_message_limit_is_refused_in_the_page(server, transport):
    """Text longer than the transport takes (the data channel's max-message-size over WebRTC, the
    server's 4 MiB message limit over the WebSocket) is refused with a clear message, not shown as
    sent, and the session goes on."""
    from playwright.sync_api import expect

    problems: list[str] = []
    size = 300_000 if transport == "webrtc" else 4_300_000
    query = "/?raw=1" + ("&transport=websocket" if transport == "websocket" else "")
    with chromium(None) as ctx:
        page = _page(ctx, problems)
        page.goto(server.url + query)
        page.get_by_test_id("text-input").fill("hello")
        page.get_by_test_id("text-send").click()
        expect(page.get_by_test_id("transcript-agent").locator(".line").first).not_to_be_empty(timeout=TIMEOUT_MS)
        assert page.evaluate("() => window.moksori.transport") == transport
        page.evaluate(f"() => {{ document.querySelector('#text').value = 'w'.repeat({size});"
                      " document.querySelector('[data-testid=\"text-send\"]').click(); }")
        # (not expect(): on failure it would print the page, megabytes of it)
        page.wait_for_function("() => window.moksori.errors.some((e) => e.includes('too long'))",
                               timeout=TIMEOUT_MS)
        time.sleep(1)
        ui = _ui(page)
        assert ui["typed"] == ["hello"], [t[:20] for t in ui["typed"]]
        assert page.evaluate("() => window.moksori.events.error || 0") == 0  # the server never saw it
        page.get_by_test_id("text-input").fill("What is two plus two?")
        page.get_by_test_id("text-send").click()
        expect(page.get_by_test_id("transcript-agent").locator(".line").nth(1)).not_to_be_empty(timeout=TIMEOUT_MS)
        assert _ui(page)["state"] != "off"
        page.get_by_test_id("stop").click()
        _wait_sessions(server, 0)
    assert not problems, problems


def _set_key(page, key: str) -> None:
    """Type a key into Settings (folded away: set it as typing would, then commit it)."""
    page.evaluate("(key) => { const el = document.querySelector('#api-key'); el.value = key;"
                  " el.dispatchEvent(new Event('change')); }", key)


def test_a_bad_api_key_or_stored_user_id_is_caught_in_the_page(server):
    """An API key no browser can send (a space, a quote, a comma, non-Latin-1) is refused in
    Settings and at Start with a clear message that never quotes the key, and nothing is sent; a
    stored user id the server would refuse (here with a lone surrogate) is replaced by a new one."""
    from playwright.sync_api import expect

    problems: list[str] = []
    requests: list[str] = []
    with chromium(None) as ctx:
        page = _page(ctx, problems)
        page.on("request", lambda r: ("/session" in r.url or "/v1/realtime" in r.url) and requests.append(r.url))
        page.on("websocket", lambda ws: requests.append(ws.url))
        page.goto(server.url + "/?raw=1")
        page.evaluate("() => localStorage.setItem('moksori.user', 'web-\\ud800x')")
        page.reload()
        user = page.evaluate("() => window.moksori.user")
        assert user.startswith("web-") and "x" not in user, user
        assert page.evaluate("() => localStorage.getItem('moksori.user')") == user

        for key in ('sk-abc def"SECRET1', "sk-abc,SECRET2", "sk-\u043a\u043b\u044e\u0447SECRET3"):
            page.evaluate("() => { window.moksori.errors.length = 0; }")
            _set_key(page, key)
            page.get_by_test_id("start").click()
            page.wait_for_timeout(1000)
            ui = _ui(page)
            assert ui["state"] == "off" and ui["start"] and not ui["stop"], ui
            assert len(ui["errors"]) == 2 and all("API key" in e and "SECRET" not in e for e in ui["errors"]), ui
            assert page.evaluate("() => localStorage.getItem('moksori.key')") in (None, ""), key
        assert requests == [], requests

        _set_key(page, "")
        page.get_by_test_id("text-input").fill("hello")
        page.get_by_test_id("text-send").click()
        expect(page.get_by_test_id("transcript-agent").locator(".line").first).not_to_be_empty(timeout=TIMEOUT_MS)
        assert all(f"user={user}" in u for u in requests if "/v1/realtime" in u), requests
        page.get_by_test_id("stop").click()
        _wait_sessions(server, 0)
    assert not problems, problems
