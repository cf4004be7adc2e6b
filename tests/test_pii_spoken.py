"""PII in numbers spoken as words, as a transcript writes them: "공일공 일이삼사 오육칠팔이에요",
"four one one one, one one one one, ...", "oh one oh ...".

`moksori.text.spoken_digits.spoken_digit_runs` (pure: a text -> its runs of digits, each digit
with the characters it was read from) and the PII redactor on top of it: the number words are
masked in the original text, a particle after them stays, and ordinary sentences full of the
same words ("이 일 이후에 오 분 뒤에", "I won one, too", counting) are left alone.

End to end: the real app (`tests/text_server.py`: `create_app` under uvicorn, its store on real
SQLite, fast fake speech models) with `MOKSORI_GUARDRAILS_REDACT_PII_FOR_LLM=true`; the official
`openai` SDK's Realtime client sends a typed user turn (`conversation.item.create`: no recording
in ../shared/speech says a long digit sequence, so the turn is typed; a transcript takes the
same input hook and recorder) and the stand-in LLM (`tests/scripted_llm_server.py`) records the
prompt it was sent; the Conversations API shows what was stored.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from pathlib import Path

import httpx
import pytest
from realtime_speech import Client
import test_realtime_clients
from servers import ServerProcess, free_port

from moksori.guardrails import PIIRedactor
from moksori.text.korean_numbers import normalize_korean
from moksori.text.spoken_digits import spoken_digit_runs

HERE = Path(__file__).parent


def words_of(text: str) -> list[tuple[str, str]]:
    """Each run: its digits and the text it covers."""
    return [(r.digits, text[r.start:r.end]) for r in spoken_digit_runs(text)]


# --------------------------------------------------------------------------- the pure reader


@pytest.mark.parametrize("text,runs", [
    ("제 번호는 공일공 일이삼사 오육칠팔이에요", [("01012345678", "공일공 일이삼사 오육칠팔")]),
    ("공일공-일이삼사-오육칠팔", [("01012345678", "공일공-일이삼사-오육칠팔")]),
    ("공일공에 일이삼사에 오육칠팔로 주세요", [("01012345678", "공일공에 일이삼사에 오육칠팔")]),
    ("공 일 공 일 이 삼 사 오 육 칠 팔", [("01012345678", "공 일 공 일 이 삼 사 오 육 칠 팔")]),
    ("영일영 천이백삼십사 오천육백칠십팔이요", [("01012345678", "영일영 천이백삼십사 오천육백칠십팔")]),
    ("끝자리는 일이삼이예요", [("1232", "일이삼이")]),  # 이예요: the digit 2, then 예요
    ("끝자리는 일이삼칠이에요", [("1237", "일이삼칠")]),  # 이에요 after 칠: the particle
    ("010 일이삼사 오육칠팔", [("01012345678", "010 일이삼사 오육칠팔")]),
    ("my card is four one one one, one one one one.", [("41111111", "four one one one, one one one one")]),
    ("Oh one oh, double five, triple two.", [("01055222", "Oh one oh, double five, triple two")]),
    ("four one five, five five five, twenty-six seventy one", [("4155552671", "four one five, five five five, "
                                                                "twenty-six seventy one")]),
    ("eight hundred five five five", [("800555", "eight hundred five five five")]),  # X hundred: X00
    ("five hundred fifty five, two three four", [("555234", "five hundred fifty five, two three four")]),
    ("five hundred five", [("5005", "five hundred five")]),  # a unit after hundred is the next digit
    ("a hundred people, twenty five hundred", [("25", "twenty five")]),  # only one .. nine hundred
    ("plus eight two one oh one two three four five six seven eight",
     [("821012345678", "eight two one oh one two three four five six seven eight")]),
    ("사이에 오이 이사 삼삼오오 공이 일이삼", [("02123", "공이 일이삼")]),  # words, and an area code
    ("FOUR ONE ONE dash ONE", [("4111", "FOUR ONE ONE dash ONE")]),
    ("I won one, too", [("1", "one")]),
    ("someone gave everyone a tone", []),  # words only as whole words
    ("이 일 이후에 오 분 뒤에", [("21", "이 일"), ("5", "오")]),
    ("오늘 일이 많아서 이사 가요", [("1", "일")]),  # 일이: 일 + 이 (like 팔이); 이사 (a move): a word
    ("It costs 1200 dollars", []),  # digits alone are no spoken run
])
def test_runs_of_spoken_digits(text: str, runs: list[tuple[str, str]]) -> None:
    assert words_of(text) == runs


def test_each_digit_maps_to_the_characters_it_was_read_from() -> None:
    text = "번호 공일공 천이백삼십사, double five"
    [run] = spoken_digit_runs(text)
    assert run.digits == "010123455"
    assert [text[s:e] for s, e in run.spans] == ["공", "일", "공"] + ["천이백삼십사"] * 4 + ["double five"] * 2
    assert [t.group_start for t in run.tokens] == [True, False, False, True, True]  # pauses: a space, a comma
    assert run.spoken_digits == 9


@pytest.mark.parametrize("text,sign", [
    ("call plus eight two one oh", "plus"),
    ("Plus one five five five", "Plus"),
    ("+ eight two one oh", "+"),
    ("+82 일공 일이삼사", "+"),
    ("플러스 팔이 일공 일이삼사", "플러스"),
    ("국가번호 팔이, 일공 일이삼사", ""),  # a label: the number starts at its first digit
    ("two plus two", "plus"),
])
def test_a_plus_sign_said_before_a_run_marks_where_its_international_form_starts(text: str, sign: str) -> None:
    *_, run = spoken_digit_runs(text)
    assert run.intl_start is not None
    assert text[run.intl_start:run.start].strip() == sign


def test_two_syllable_korean_groups_count_only_in_a_country_code_and_the_group_after_it() -> None:
    assert words_of("플러스 팔이 일공 일이삼사 오육칠팔") == [("821012345678", "팔이 일공 일이삼사 오육칠팔")]
    assert words_of("국가번호는 팔이 이 일이삼 사오육칠") == [("8221234567", "팔이 이 일이삼 사오육칠")]
    assert words_of("플러스 오이 사이 이사") == [("5242", "오이 사이")]  # then 이사 is a word again
    assert words_of("오이 사이 일공") == []
    assert [r.intl_start for r in spoken_digit_runs("one oh one, 일공 일이삼")] == [None, None]


def test_english_words_spaced_one_by_one_are_no_groups_korean_groups_are() -> None:
    [en] = spoken_digit_runs("nine zero zero one zero one one two three four five six eight")
    assert [t.group_start for t in en.tokens] == [True] + [False] * 12
    [ko] = spoken_digit_runs("구공공일공일 일이삼사오육팔")
    assert [i for i, t in enumerate(ko.tokens) if t.group_start] == [0, 6]


# --------------------------------------------------------------------------- redaction

REDACTED = [
    # Korean phones: glued, spaced, hyphens, 에 between groups, positional groups, a particle kept
    ("제 번호는 공일공 일이삼사 오육칠팔이에요", "제 번호는 [PHONE]이에요", ["phone"]),
    ("공일공 일이삼사 오육칠팔", "[PHONE]", ["phone"]),
    ("연락처는 공일공-구팔칠육-오사삼이입니다", "연락처는 [PHONE]입니다", ["phone"]),
    ("공일공에 일이삼사에 오육칠팔로 전화 주세요", "[PHONE]로 전화 주세요", ["phone"]),
    ("공 일 공, 일 이 삼 사, 오 육 칠 팔이요", "[PHONE]이요", ["phone"]),
    ("영일영 천이백삼십사 오천육백칠십팔이요", "[PHONE]이요", ["phone"]),
    ("오육칠팔이 제 번호 공일공 일이삼사 오육칠팔이 맞아요", "오육칠팔이 제 번호 [PHONE]이 맞아요", ["phone"]),
    ("사무실은 공이 일이삼 사오육칠로 걸어 주세요", "사무실은 [PHONE]로 걸어 주세요", ["phone"]),
    ("공삼일 칠팔구 일이삼사 번이에요", "[PHONE] 번이에요", ["phone"]),
    ("010 일이삼사 오육칠팔로 문자 주세요", "[PHONE]로 문자 주세요", ["phone"]),
    # English phones: Korean mobile, North American with pairs, "double", "one eight hundred"
    ("call me on oh one oh, one two three four, five six seven eight please",
     "call me on [PHONE] please", ["phone"]),
    ("My number is four one five, five five five, twenty-six seventy-one.", "My number is [PHONE].", ["phone"]),
    ("it's four one five double five five two six seven one", "it's [PHONE]", ["phone"]),
    ("Call five five five, two three four, five six seven eight now.", "Call [PHONE] now.", ["phone"]),
    # "hundred" in a digit group: "X hundred" is X00, "X hundred fifty five" X55
    ("my number is five hundred fifty five, two three four, five six seven eight",
     "my number is [PHONE]", ["phone"]),
    ("call one eight hundred five five five, one two three four now", "call [PHONE] now", ["phone"]),
    # international numbers: the spoken (or written) plus sign is masked with the digits
    ("call me at plus eight two one oh one two three four five six seven eight", "call me at [PHONE]", ["phone"]),
    ("Plus one five five five, one two three, four five six seven.", "[PHONE].", ["phone"]),
    ("it's plus eighty-two ten, twelve thirty-four, fifty-six seventy-eight", "it's [PHONE]", ["phone"]),
    ("plus four four, seven nine one one, one two three four five six", "[PHONE]", ["phone"]),
    ("plus forty-four, seven nine one one, one two three four five six", "[PHONE]", ["phone"]),
    ("+1 five five five one two three four five six seven", "[PHONE]", ["phone"]),
    ("+ eight two, one oh, one two three four, five six seven eight", "[PHONE]", ["phone"]),
    ("+82 일공 일이삼사 오육칠팔이에요", "[PHONE]이에요", ["phone"]),
    ("플러스 팔이 일공 일이삼사 오육칠팔로 연락 주세요", "[PHONE]로 연락 주세요", ["phone"]),
    ("국가번호 팔이, 일공 일이삼사 오육칠팔이에요", "국가번호 [PHONE]이에요", ["phone"]),
    ("플러스 팔이 이 일이삼 사오육칠로요", "[PHONE]로요", ["phone"]),  # (before 이요, 사오육칠이 is 8 digits too)
    ("플러스 팔이 일공 일이삼사 오육칠팔이요", "[PHONE]이요", ["phone"]),  # +82: a Korean number's length
    ("plus eight two oh one oh, one two three four, five six seven eight", "[PHONE]", ["phone"]),
    # cards (Luhn), English and Korean
    ("my card is four one one one, one one one one, one one one one, one one one one.", "my card is [CARD].", ["card"]),
    ("Card number: four one one one one one one one one one one one one one one one", "Card number: [CARD]", ["card"]),
    ("Four, one, one, one, one, one, one, one, one, one, one, one, one, one, one, one.", "[CARD].", ["card"]),
    ("amex three seven eight two eight two two four six three one zero zero zero five", "amex [CARD]", ["card"]),
    ("카드 번호는 오오공공 공공공공 공공공공 공공공사예요", "카드 번호는 [CARD]예요", ["card"]),
    ("I won one, four one one one one one one one one one one one one one one one", "I won one, [CARD]", ["card"]),
    # resident numbers: a pause after the sixth digit (as a hyphen), or the check digit
    ("주민번호는 구공공일공일 일이삼사오육팔 입니다", "주민번호는 [RRN] 입니다", ["rrn"]),
    ("구공공일공일 다시 일이삼사오육칠이요", "[RRN]이요", ["rrn"]),  # hyphenated: no check digit needed
    ("nine zero zero one zero one one two three four five six eight", "[RRN]", ["rrn"]),  # check digit right
    # two numbers in a row: both, not a card made of their middle
    ("공일공 일이삼사 오육칠팔 공일공 구팔칠육 오사삼이요", "[PHONE] [PHONE]요", ["phone", "phone"]),
    ("oh one oh, one two three four, five six seven eight, four one one one, one one one one, one one one one, "
     "one one one one", "[PHONE], [CARD]", ["phone", "card"]),
    # digits and words in one text
    ("010-1234-5678 또는 공일공 구팔칠육 오사삼이", "[PHONE] 또는 [PHONE]", ["phone", "phone"]),
    ("mail kim@example.com or call oh one oh one two three four five six seven eight",
     "mail [EMAIL] or call [PHONE]", ["email", "phone"]),
]

KEPT = [
    # Korean: digit syllables as ordinary words and particles, short numbers, counting
    "이 일 이후에 오 분 뒤에 다시 전화할게요.",
    "오늘 일이 많아서 이 사람 저 사람 만나느라 바빴어요.",
    "삼일절에 사촌이랑 오이 사러 갔어요.",
    "일 년에 이 번, 삼 월과 구 월에 가요.",
    "구구단은 이 단부터 구 단까지 외웠어요.",
    "삼삼오오 모여서 이야기했어요.",
    "육이오 전쟁은 천구백오십 년에 시작됐어요.",
    "일 이 삼 사 오 육 칠 팔 구 십, 다 셌어요.",
    "십 구 팔 칠 육 오 사 삼 이 일 발사!",
    "사이에 오 분 정도 걸리고 이사 가는 날은 구일이에요.",
    "오이 사이 이사 육이오 삼삼오오 일일이 이삼일 구구 사사 공 영 칠 팔 백 천 이백 오십",
    "이번 주 일요일 오후 이 시에 만나요. 오백 원짜리 동전 이 개랑 천 원짜리 지폐 삼 장 있어요.",
    "이 일 삼 사 오 분만 기다려 주세요",  # five digit words, then a counter
    "영어 공부는 공원에서 일찍 해요. 이사님이 오셨어요.",
    "구 일 오 일 칠 일 이렇게 세 번 와요.",
    # English
    "I won one, too.",
    "One or two, maybe three or four.",
    "Oh, one more thing: I need two or three of those.",
    "We had one, two, three, four, five, six, seven, eight, nine, ten people.",
    "one two three four five six seven eight nine ten eleven twelve",
    "Ten, nine, eight, seven, six, five, four, three, two, one, liftoff!",
    "Two for one, four for three, nine to five.",
    "It's a one-on-one at nine thirty, then two more at ten fifteen and eleven forty five.",
    "Table for two at seven, room one oh one for nine.",
    "She is twenty-five, he is thirty one, and their kids are nine and seven.",
    "A double espresso and a triple shot, please. O Canada!",
    "Someone said everyone was done at nine.",
    "In nineteen ninety nine we sold twenty twenty four units.",
    "The score was five five, then six four, seven five, six two.",
    # "plus" and "hundred" in arithmetic, amounts and idioms
    "Two plus two is four.",
    "A hundred people came.",
    "Plus one for the idea.",
    "Five hundred people came, two hundred left, one hundred stayed.",
    "One plus two plus three plus four plus five plus six is twenty-one.",
    "Prices: two hundred fifty, three hundred, four hundred ninety nine, five hundred, six hundred.",
    "It's nine hundred ninety nine, plus two hundred twelve, plus eleven.",
    "Plus twenty, plus thirty, plus forty-five, plus ninety.",
    "Add plus twenty twenty-four, twenty twenty-five, twenty twenty-six.",  # pairs after a plus: +82 / +1 only
    "The total was plus nine eight seven, six five four, three two one.",  # counting down
    "It was two plus three, four plus five, six plus seven, eight plus nine.",
    "Nineteen hundred, two thousand five hundred, and twenty five hundred.",
    "이 더하기 이는 사, 플러스 일 점 받았어요.",
    "플러스 알파로 오 분 더 드릴게요. 국가번호가 뭐예요?",
    # times and years said as pairs (both pass the Luhn check): cards are read digit by digit
    "Trains at nine thirty, ten fifteen, eleven forty-five, twelve twenty, one oh nine.",
    "The years: nineteen eighty-four, twenty twelve, twenty twenty-one, twenty forty-nine.",
    # digit text is as before (the digit rules' own cases)
    "Order number 123456789012 ships in 3-5 days.",
    "The card ending 4111 1111 1111 1112 is not a valid card number.",
]


@pytest.mark.parametrize("text,expected,kinds", REDACTED)
def test_numbers_spoken_as_words_are_redacted(text: str, expected: str, kinds: list[str]) -> None:
    assert PIIRedactor().redact(text) == (expected, kinds)


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_sentences_full_of_number_words_are_kept(text: str) -> None:
    assert PIIRedactor().redact(text) == (text, [])


@pytest.mark.parametrize("number", ["010-1234-5678", "02-123-4567", "031-987-6543", "070-1234-5678", "011-234-5678"])
def test_what_the_tts_normalizer_writes_for_a_phone_number_is_recognised(number: str) -> None:
    """`normalize_korean` (before TTS) reads a phone number digit by digit with 공: the reverse
    direction finds it again."""
    said = normalize_korean(f"전화번호는 {number}입니다")
    assert said != f"전화번호는 {number}입니다"
    assert PIIRedactor().redact(said) == ("전화번호는 [PHONE]입니다", ["phone"]), said


def test_only_the_configured_kinds_and_only_valid_numbers() -> None:
    said = "공일공 일이삼사 오육칠팔, four one one one one one one one one one one one one one one one"
    assert PIIRedactor(["email"]).redact(said) == (said, [])
    assert PIIRedactor(["phone"]).redact(said) == ("[PHONE], " + said.split(", ")[1], ["phone"])
    assert PIIRedactor(["card"]).redact(said) == (said.split(", ")[0] + ", [CARD]", ["card"])
    for bad_luhn in ("four one one one one one one one one one one one one one one two",
                     "four one one one, one one one one, one one one one, one one one two",
                     "four, one, one, one, one, one, one, one, one, one, one, one, one, two, one, two",
                     "사일일일 일일일일 일일일일 일일일이요"):
        assert PIIRedactor().redact(bad_luhn) == (bad_luhn, [])
    bad_date = "구공일삼공일 일이삼사오육칠"  # month 13
    assert PIIRedactor().redact(bad_date) == (bad_date, [])
    no_check = "구공공일공일일이삼사오육칠"  # glued, like 9001011234567: the check digit is wrong
    assert PIIRedactor().redact(no_check) == (no_check, [])


def test_long_texts_stay_cheap() -> None:
    """The log filter runs the redactor on every record: a pathological run of number words
    costs no more than a few milliseconds per kilobyte."""
    texts = ["one, " * 4000, "one " * 4000, "공일" * 4000, "이 " * 4000 + "오육칠팔이에요"]
    t0 = time.process_time()
    for text in texts:
        PIIRedactor().redact(text)
    assert time.process_time() - t0 < 2.0


# --------------------------------------------------------------------------- end to end

K1 = "sk-pii-spoken-key"


scripted_llm = test_realtime_clients.scripted_llm  # (a module fixture)


@pytest.fixture(scope="module")
def server(tmp_path_factory, scripted_llm):
    port = free_port()
    db = tmp_path_factory.mktemp("db") / "moksori.db"
    env = {"MOKSORI_STORE_URL": f"sqlite+aiosqlite:///{db}", "MOKSORI_API_KEYS": K1,
           "MOKSORI_DATA_DIR": str(tmp_path_factory.mktemp("data")), "MOKSORI_LLM_PROVIDER": "openai",
           "MOKSORI_LLM_BASE_URL": scripted_llm.url, "MOKSORI_LLM_MODEL": "scripted", "MOKSORI_CONFIG": "",
           "MOKSORI_LANGUAGE": "ko", "MOKSORI_GUARDRAILS_REDACT_PII_FOR_LLM": "true", "PYTHONUNBUFFERED": "1"}
    with ServerProcess([sys.executable, str(HERE / "text_server.py"), str(port)], port=port,
                       ready_path="/health", env=env, ready_timeout_s=60) as srv:
        yield srv
        assert "Traceback" not in srv.log_text()


def test_a_spoken_phone_and_card_in_a_user_turn_are_masked_for_the_llm_and_the_store(server, scripted_llm) -> None:
    said = ("제 번호는 공일공 일이삼사 오육칠팔이에요. "
            "And my card is four one one one, one one one one, one one one one, one one one one.")
    masked = "제 번호는 [PHONE]이에요. And my card is [CARD]."
    user = f"pii-{secrets.token_hex(4)}"

    async def main() -> dict:
        c = await Client.open(server.port, K1, user=user)
        try:
            await c.wait("session.created", timeout=10)
            await c.conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await c.wait("session.updated", timeout=10)
            before = len(scripted_llm.requests)
            await c.conn.conversation.item.create(item={"type": "message", "role": "user",
                                                        "content": [{"type": "input_text", "text": said}]})
            await c.conn.response.create()
            done = await c.wait("response.done", timeout=30)
            assert done["response"]["status"] == "completed", done
            return scripted_llm.requests[before]
        finally:
            await c.close()

    request = asyncio.run(main())
    users = [m["content"] for m in request["messages"] if m["role"] == "user"]
    assert users == [masked], users  # the input hook's rewrite is what the LLM read

    headers = {"Authorization": f"Bearer {K1}"}
    deadline = time.monotonic() + 15
    stored: list[str] = []
    while time.monotonic() < deadline:
        convs = httpx.get(f"{server.url}/v1/conversations?user={user}", headers=headers, timeout=10).json()["data"]
        if convs:
            items = httpx.get(f"{server.url}/v1/conversations/{convs[0]['id']}/items?order=asc", headers=headers,
                              timeout=10).json()["data"]
            stored = [i["content"][0]["text"] for i in items if i.get("role") == "user"]
            if stored:
                break
        time.sleep(0.2)
    assert stored == [masked], stored  # the recorder masked what it wrote
