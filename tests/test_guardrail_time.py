"""The guardrails' time limit is the checking thread's own CPU time, not the process's.

`regex`'s `timeout=` counts C's `clock()`, the CPU time of the whole process. With two model
threads busy (here: two real threads hashing in native code with the GIL released, as
CTranslate2, llama.cpp and onnxruntime run), a check that takes half its 40 ms budget on a
quiet machine ran out of time: the process's CPU clock ran three times as fast as the checking
thread's. Now the check passes under that load, and a catastrophic pattern still runs out of
time, after about its budget of its own thread's time.
"""

from __future__ import annotations

import contextlib
import hashlib
import statistics
import threading
import time
from collections.abc import Iterator

from moksori.guardrails.terms import TermList

BUDGET_S = 0.04
REPEATED_WORD = r"\b(\w+)\s+\1\b"  # scans all of a text without a repeated word: work grows with its length


@contextlib.contextmanager
def busy_threads(n: int) -> Iterator[None]:
    """`n` threads of this process burning CPU in native code (hashing, the GIL released)."""
    stop = threading.Event()
    data = bytes(4 << 20)

    def burn() -> None:
        while not stop.is_set():
            hashlib.sha256(data).digest()

    threads = [threading.Thread(target=burn, name=f"burner-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    try:
        p0, t0 = time.process_time(), time.thread_time()
        time.sleep(0.3)
        others = time.process_time() - p0 - (time.thread_time() - t0)
        assert others > 0.25, f"the busy threads used {others:.2f} s of CPU in 0.3 s"  # (other processes too)
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(5)


def own_cpu(fn) -> tuple[object, float]:
    """(result, CPU seconds of this thread)."""
    t = time.thread_time()
    out = fn()
    return out, time.thread_time() - t


def text_costing(terms: TermList, share: float) -> str:
    """Distinct words, enough that one quiet check costs about `share` of the budget of this thread's time."""
    n = 64
    while True:
        text = " ".join(f"w{i}" for i in range(n))
        cost = statistics.median(own_cpu(lambda t=text: terms.first(t, "en"))[1] for _ in range(3))
        if cost >= share * BUDGET_S:
            return text
        n = int(n * max(1.2, min(4.0, share * BUDGET_S / max(cost, 1e-5))))


def test_a_check_in_time_passes_while_other_threads_burn_cpu() -> None:
    terms = TermList(patterns={"en": [REPEATED_WORD]}, on_timeout="closed", budget_s=BUDGET_S)
    text = text_costing(terms, 0.5)
    assert terms.first(text, "en") is None  # quiet: in time, nothing found
    with busy_threads(2):
        for i in range(5):
            found, spent = own_cpu(lambda i=i: terms.first(f"{text} x{i}", "en"))
            assert found is None, f"try {i}: {found} ({spent * 1000:.1f} ms of this thread's CPU)"
            assert terms.mask(f"{text} y{i}", "en") == (f"{text} y{i}", 0)
        assert terms.first(f"{text} again again", "en") is not None  # and it still finds what is there


def test_a_catastrophic_pattern_still_runs_out_of_time_under_load() -> None:
    terms = TermList(patterns={"en": ["(a+)+$"]}, on_timeout="closed", budget_s=BUDGET_S)
    for load in (0, 2):
        with busy_threads(load) if load else contextlib.nullcontext():
            t0 = time.monotonic()
            found, spent = own_cpu(lambda n=load: terms.first("a" * (5000 + n) + "!", "en"))
            took = time.monotonic() - t0
        assert found is not None and found.timed_out, (load, found)
        # its own budget, not cut short by the other threads' work, and not much more than it
        assert 0.75 * BUDGET_S <= spent <= 2.5 * BUDGET_S, (load, spent)
        assert took < 1.0, (load, took)
