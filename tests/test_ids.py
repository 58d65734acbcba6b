"""Event ids: UUIDv7 strings as RFC 9562 lays them out, growing within the process."""

from __future__ import annotations

import itertools
import os
import re
import time
import uuid

import pytest

from agent import ids
from agent.ids import uuid7

CANONICAL = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_an_id_is_a_canonical_uuid_version_7_of_now() -> None:
    before = time.time_ns() // 1_000_000
    text = uuid7()
    after = time.time_ns() // 1_000_000
    assert CANONICAL.match(text), text
    u = uuid.UUID(text)
    assert (u.version, u.variant) == (7, uuid.RFC_4122)
    assert str(u) == text
    assert before <= u.int >> 80 <= after, "48 bits of Unix time in milliseconds"


def test_ids_grow_and_never_repeat_within_a_millisecond() -> None:
    made = [uuid7() for _ in range(50_000)]  # many per millisecond
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(CANONICAL.match(t) for t in made)


def test_each_millisecond_starts_from_fresh_random_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(time.time_ns() + 10**9, 10**20, 10**6))  # a millisecond per id
    monkeypatch.setattr("agent.ids.time_ns", lambda: next(clock))
    made = [uuid.UUID(uuid7()).int for _ in range(2_000)]
    rand_a = {(u >> 64) & 0xFFF for u in made}  # 12 bits: about 1,600 values of 2,000 draws
    rand_b = {u & (1 << 62) - 1 for u in made}
    assert len(rand_a) > 1_400 and len(rand_b) == 2_000


def test_ids_of_one_millisecond_grow_by_random_amounts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time_ns() + 10**12  # after every id made so far
    monkeypatch.setattr("agent.ids.time_ns", lambda: now)  # the clock stands still
    made = [uuid.UUID(uuid7()).int for _ in range(1_000)]
    rand = [(u >> 64 & 0xFFF) << 62 | u & (1 << 62) - 1 for u in made]  # the 74 bits
    steps = [b - a for a, b in itertools.pairwise(rand)]
    assert all(s >= 1 for s in steps)
    assert len(set(steps)) > 990, "not a counter: the next id cannot be guessed from one"
    assert {u >> 80 for u in made} == {now // 1_000_000}


def test_a_wall_clock_stepped_back_keeps_the_order(monkeypatch: pytest.MonkeyPatch) -> None:
    first = uuid7()
    now = time.time_ns()
    monkeypatch.setattr("agent.ids.time_ns", lambda: now - 3_600 * 10**9)  # an hour back
    later = [uuid7() for _ in range(100)]
    assert [first, *later] == sorted([first, *later])
    assert len({first, *later}) == 101


def test_random_bits_running_over_carry_into_the_time(monkeypatch: pytest.MonkeyPatch) -> None:
    ms = time.time_ns() // 1_000_000 + 10
    monkeypatch.setattr(ids, "_last", ms << 74 | (1 << 74) - 1)  # the last id of its ms
    u = uuid.UUID(uuid7())
    assert u.int >> 80 == ms + 1 and (u.version, u.variant) == (7, uuid.RFC_4122)


def test_a_forked_child_makes_ids_of_its_own() -> None:
    uuid7()  # the parent holds random bytes for its next ids
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(w, " ".join(uuid7() for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        child = f.read().split()
    os.waitpid(pid, 0)
    parent = [uuid7() for _ in range(5)]
    assert len(child) == 5
    # the same random bytes would give ids that differ only in their first 48 bits
    assert not {c[14:] for c in child} & {p[14:] for p in parent}
