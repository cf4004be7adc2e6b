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
