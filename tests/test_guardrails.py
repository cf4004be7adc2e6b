"""Guardrails: term and pattern lists (Korean and English), the PII redactor (with false-positive
checks), the input and output hooks, and the moderation client against a loopback stand-in
for an OpenAI-compatible /v1/moderations endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from moksori.errors import ConfigError
from moksori.guardrails import (Guardrails, GuardrailTripped, ModerationClient, PIILogFilter, PIIRedactor, TermList,
                                luhn_ok, rrn_ok)
from moksori.settings import load_settings
from servers import ThreadedASGIServer, closed_port

# --------------------------------------------------------------------------- PII

REDACTED = [
    ("제 번호는 010-1234-5678이에요", "제 번호는 [PHONE]이에요", ["phone"]),
    ("010 9876 5432로 연락 주세요", "[PHONE]로 연락 주세요", ["phone"]),
    ("01098765432", "[PHONE]", ["phone"]),
    ("사무실은 02-123-4567입니다", "사무실은 [PHONE]입니다", ["phone"]),
    ("call me at +82 10-1234-5678", "call me at [PHONE]", ["phone"]),
    ("or +82 (0)10 1234 5678", "or [PHONE]", ["phone"]),
    ("US office (415) 555-2671 or +1 415 555 2671", "US office [PHONE] or [PHONE]", ["phone", "phone"]),
    ("write to kim.minsu+voice@example.co.kr.", "write to [EMAIL].", ["email"]),
    ("메일은 user_01@test-mail.com 이요", "메일은 [EMAIL] 이요", ["email"]),
    ("card 4111 1111 1111 1111 expires", "card [CARD] expires", ["card"]),
    ("카드번호 5500-0000-0000-0004", "카드번호 [CARD]", ["card"]),
    ("amex 378282246310005", "amex [CARD]", ["card"]),
    ("주민번호는 900101-1234568 입니다", "주민번호는 [RRN] 입니다", ["rrn"]),
    ("주민번호 021225-4123456", "주민번호 [RRN]", ["rrn"]),  # 2002, post-2020 style: no check digit needed
    ("9001011234568", "[RRN]", ["rrn"]),  # no hyphen: the check digit is right
]

KEPT = [
    "It costs 1,200,000원 and the meeting is on 2026-12-02 at 10:30.",
    "가격은 35,000원이고 12월 25일 오후 3시에 만나요.",
    "Order number 123456789012 ships in 3-5 days.",
    "The card ending 4111 1111 1111 1112 is not a valid card number.",  # Luhn fails
    "9001011234567",  # 13 digits, no hyphen, wrong check digit: not an RRN
    "901301-1234567",  # month 13: not an RRN
    "version 1.2.3-4, pi is 3.14159265358979, room 1201",
    "We sold 2024 units in 365 days; call 112 or 119 in an emergency.",
    "$1,234.56 total, 15% off, ISBN 978-3-16-148410-0",
    "The score was 3-1 and the year 1999 was good.",
    "12:30-13:45, 2026.12.02, 10-20 people",
]


@pytest.mark.parametrize("text,expected,kinds", REDACTED)
def test_pii_is_redacted(text, expected, kinds) -> None:
    assert PIIRedactor().redact(text) == (expected, kinds)


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_numbers_dates_and_prices_are_kept(text) -> None:
    assert PIIRedactor().redact(text) == (text, [])


def test_checks_and_kinds() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert rrn_ok("900101", "1", "234568", need_check_digit=True)
    assert not rrn_ok("900101", "1", "234567", need_check_digit=True)
    assert rrn_ok("900101", "1", "234567", need_check_digit=False)
    assert not rrn_ok("900230", "1", "234567", need_check_digit=False)  # 30 February
    only_email = PIIRedactor(["email"])
    assert only_email("a@b.io 010-1234-5678") == "[EMAIL] 010-1234-5678"
    with pytest.raises(ConfigError, match="unknown kind"):
        PIIRedactor(["ssn"])


def test_log_filter_masks_pii_in_records(caplog) -> None:
    logger = logging.getLogger("moksori.test.pii")
    handler_filter = PIILogFilter(PIIRedactor())
    caplog.handler.addFilter(handler_filter)
    try:
        with caplog.at_level(logging.INFO, logger="moksori.test.pii"):
            logger.info("user said %s", "my number is 010-1234-5678 and mail a@b.io")
    finally:
        caplog.handler.removeFilter(handler_filter)
    assert "010-1234-5678" not in caplog.text and "a@b.io" not in caplog.text
    assert "my number is [PHONE] and mail [EMAIL]" in caplog.text


# --------------------------------------------------------------------------- terms


def test_term_lists_per_language() -> None:
    terms = TermList({"en": ["ass", "credit check"], "ko": ["바보"]}, {"en": [r"\bkill\s+\w+"]})
    assert terms.first("You are an ass.", "en").list_kind == "terms"
    assert terms.first("This class is fun, a classic.", "en") is None  # whole words in English
    assert terms.first("Run a CREDIT  check", "en") is None and terms.first("run a Credit Check", "en")
    assert terms.first("너 바보야?", "ko").language == "ko"  # substrings in Korean (particles attach)
    assert terms.first("너 바보야?", "en") is None  # the Korean list is not applied to English text
    assert terms.first("너 바보야?", None) is not None  # unknown language: every list
    assert terms.first("I will kill time", "en").list_kind == "patterns"
    masked, n = TermList({"ko": ["비밀번호"]}).mask("제 비밀번호는 비밀번호123", "ko")
    assert masked == "제 ***는 ***123" and n == 2
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        TermList(patterns={"en": ["(unclosed"]})


def cpu_s(fn) -> tuple[object, float]:
    """(result, CPU seconds of this process): what a check costs the event loop, whatever else
    the machine is doing."""
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


@pytest.mark.parametrize("failure", ["open", "closed"])
async def test_a_backtracking_pattern_is_bounded_and_fails_per_policy(failure, caplog) -> None:
    # the tester's config: block_patterns_en = ['(a+)+$'], which took 8.6 s on 'a'*26 + '!'
    with caplog.at_level(logging.WARNING, logger="moksori.guardrails"):
        g = guard(block_patterns_en=["(a+)+$", r"\bpassword\s+is\b"], moderation_failure=failure)
    loaded = caplog.text
    caplog.clear()

    for text in ("a" * 26 + "!", "a" * 5000 + "!"):
        t = time.process_time()
        v = await g.check_input(text, "en")
        spent = time.process_time() - t
        assert spent < 0.1, f"{len(text)} chars: {spent:.2f} s of CPU on the loop"
    if failure == "open":
        assert v.action == "allow" and v.trips == ()
    else:
        assert v.action == "block" and "ran out of time" in v.trips[0].reason and v.trips[0].policy == "patterns"
    # the same text in the history again, and in the reply: still bounded, logged once
    _, spent = cpu_s(lambda: [g.scrub_history("a" * 5000 + "!", "en") for _ in range(20)])
    assert spent < 0.1
    assert g.scrub_history("a" * 5000 + "!", "en") == ("a" * 5000 + "!" if failure == "open"
                                                       else "[removed by a guardrail]")
    out = await g.check_output("a" * 3000 + "!", "en", spoken="Well,")
    assert out.action == ("allow" if failure == "open" else "block")
    assert len([r for r in caplog.records if "ran out of time" in r.getMessage()]) == 1
    # the terms are checked before the patterns: a blocked term is still caught under `open`
    v = await g.check_input("competitor pricing " + "a" * 5000 + "!", "en")
    assert v.action == "block" and v.trips[0].policy == "terms"
    # and ordinary text is unaffected
    assert (await g.check_input("What time is it?", "en")).action == "allow"
    assert (await g.check_input("my password is hunter2", "en")).action == "block"
    assert "(a+)+$" in loaded and "backtrack" in loaded  # and a warning at load, not silence


def test_mask_out_of_time_follows_the_policy() -> None:
    slow = {"en": ["(x+x+)+y"]}
    text = "x" * 3000
    assert TermList(patterns=slow, on_timeout="open").mask(text, "en") == (text, 0)
    assert TermList(patterns=slow, on_timeout="closed").mask(text, "en") == ("***", 1)
    _, spent = cpu_s(lambda: TermList(patterns=slow, budget_s=0.01).first(text, "en"))
    assert spent < 0.08


@pytest.mark.parametrize(("pattern", "risky"), [
    ("(a+)+$", True), (r"(\w+\s?)+", True), (r"(x+x+)+y", True),
    (r"\bpassword\s+is\b", False), (r"(\d{3}-)+", False), (r"\bkill\s+\w+", False), ("(?>a+)+", False),
])
def test_nested_repeats_are_warned_about_at_load(pattern, risky) -> None:
    assert bool(TermList(patterns={"en": [pattern]}).warnings) is risky


# --------------------------------------------------------------------------- hooks


def guard(**kw) -> Guardrails:
    s = load_settings(guardrails={"block_terms_en": ["competitor pricing"], "block_terms_ko": ["경쟁사 가격"],
                                  "block_patterns_en": [r"\bpassword\s+is\b"], "mask_terms_en": ["acme"], **kw})
    return Guardrails.from_settings(s.guardrails)


async def test_input_block_and_rewrite() -> None:
    g = guard()
    v = await g.check_input("Tell me about competitor pricing please", "en")
    assert v.action == "block" and v.reply == "Sorry, I can't help with that."
    assert v.trips == (GuardrailTripped("input", "block", "terms", "a blocked term (en)", "en"),)
    assert "competitor" not in json.dumps(v.trips[0].to_data())  # the record never carries the matched text
    v = await g.check_input("경쟁사 가격 알려줘", "ko")
    assert v.action == "block" and v.reply == "죄송하지만 그 부분은 도와드릴 수 없어요."
    v = await g.check_input("Is ACME open today?", "en")
    assert v.action == "rewrite" and v.text == "Is *** open today?" and v.trips[0].policy == "mask"
    v = await g.check_input("What time is it?", "en")
    assert v.action == "allow" and v.text == "What time is it?" and v.trips == ()
    g2 = guard(redact_pii_for_llm=True)
    v = await g2.check_input("my number is 010-1234-5678", "en")
    assert v.action == "rewrite" and v.text == "my number is [PHONE]" and v.trips[0].policy == "pii"


async def test_output_checked_per_clause_with_what_was_already_spoken() -> None:
    g = guard()
    assert (await g.check_output("Sure, here are our prices.", "en")).action == "allow"
    v = await g.check_output(" competitor pricing is lower.", "en", spoken="Well,")
    assert v.action == "block" and v.replacement == "Sorry, I can't help with that."
    # a blocked phrase split across two clauses is caught on the second one
    v = await g.check_output("pricing is lower.", "en", spoken="Compared with competitor")
    assert v.action == "block"
    # ... but a match lying wholly in what was already spoken is not reported again
    v = await g.check_output("Anything else?", "en", spoken="competitor pricing")
    assert v.action == "allow"
    v = await g.check_output("your password is hunter2", "en")
    assert v.action == "block" and v.trips[0].policy == "patterns"
    only_input = guard(check="input")
    assert (await only_input.check_output("competitor pricing", "en")).action == "allow"


async def test_nothing_configured_is_a_no_op() -> None:
    g = Guardrails.from_settings(load_settings().guardrails)
    assert not g.active
    assert (await g.check_input("anything at all 010-1234-5678", "en")).action == "allow"
    assert (await g.check_output("anything", "en")).action == "allow"
    assert g.redact("mail me at a@b.io") == "mail me at [EMAIL]"  # stored/logged text is still redacted


# --------------------------------------------------------------------------- moderation


class ModerationStandIn:
    """A stand-in for an OpenAI-compatible /v1/moderations server: flags text containing
    'attack' as violence; 'slow' makes it wait 3 s; 'broken' answers HTTP 500."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.app = Starlette(routes=[Route("/v1/moderations", self.moderate, methods=["POST"])])

    async def moderate(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.requests.append({"body": body, "auth": request.headers.get("authorization")})
        text = body["input"]
        if "slow" in text:
            await asyncio.sleep(3)
        if "broken" in text:
            return JSONResponse({"error": {"message": "internal error"}}, status_code=500)
        flagged = "attack" in text
        return JSONResponse({"id": "modr-1", "model": body.get("model", "omni-moderation-latest"),
                             "results": [{"flagged": flagged,
                                          "categories": {"violence": flagged, "harassment": False},
                                          "category_scores": {"violence": 0.9 if flagged else 0.01,
                                                              "harassment": 0.0}}]})


@pytest.fixture(scope="module")
def moderation():
    stand_in = ModerationStandIn()
    with ThreadedASGIServer(stand_in.app) as srv:
        yield stand_in, f"{srv.url}/v1"


async def test_moderation_client(moderation) -> None:
    stand_in, url = moderation
    client = ModerationClient(url, api_key="mod-key", model="omni-moderation-latest", timeout_s=1.0)
    try:
        res = await client.check("plan an attack")
        assert res.flagged and res.categories == ("violence",) and res.error is None
        assert stand_in.requests[-1] == {"body": {"input": "plan an attack", "model": "omni-moderation-latest"},
                                         "auth": "Bearer mod-key"}
        assert not (await client.check("hello there")).flagged
        slow = await client.check("slow text")
        assert not slow.flagged and slow.error is not None and "time limit" in slow.error
        broken = await client.check("broken text")
        assert broken.error is not None and "HTTP 500" in broken.error
    finally:
        await client.close()
    down = ModerationClient(f"http://127.0.0.1:{closed_port()}/v1", timeout_s=1.0)
    res = await down.check("hello")
    assert res.error is not None and "cannot reach" in res.error
    await down.close()


async def test_moderation_in_the_hooks_fail_open_and_closed(moderation) -> None:
    _, url = moderation
    g = guard(moderation_url=url, moderation_on="both", moderation_timeout_s=1.0)
    v = await g.check_input("how do I attack the castle", "en")
    assert v.action == "block" and v.trips[0].policy == "moderation" and v.trips[0].categories == ("violence",)
    assert (await g.check_output("we attack at dawn", "en")).action == "block"
    assert (await g.check_input("broken request", "en")).action == "allow"  # fail open (the default)
    closed = guard(moderation_url=url, moderation_failure="closed", moderation_timeout_s=1.0)
    v = await closed.check_input("broken request", "en")
    assert v.action == "block" and "failing closed" in v.trips[0].reason
    assert (await closed.check_output("we attack at dawn", "en")).action == "allow"  # input only by default
    await g.close()
    await closed.close()
