"""The shared embedding cache's claims: one computation per key, waiters served, failures never block."""

from __future__ import annotations

import asyncio

from agents.cache import SharedCache, cache_key


def test_keys_depend_on_model_prefix_and_text() -> None:
    k = cache_key("m@sha256:1", "", "def f(): pass")
    assert k == cache_key("m@sha256:1", "", "def f(): pass") and len(k) == 16
    assert k != cache_key("m@sha256:2", "", "def f(): pass")
    assert k != cache_key("m@sha256:1", "search_document: ", "def f(): pass")
    assert cache_key("m", "a", "bc") != cache_key("m", "ab", "c")


def test_a_claimed_key_is_computed_once_and_its_waiters_get_it() -> None:
    async def go() -> None:
        c = SharedCache(10)
        found, mine, theirs = c.claim("a", [b"k1", b"k2"])
        assert (found, mine, theirs) == ({}, [b"k1", b"k2"], [])
        found, mine, theirs = c.claim("b", [b"k1", b"k3"])
        assert (found, mine, theirs) == ({}, [b"k3"], [b"k1"])
        waiter = asyncio.ensure_future(c.wait([b"k1"], timeout=5))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        c.put("a", {b"k1": (b"\x00" * 8, False), b"k2": (b"\x01" * 8, True)})
        assert await waiter == {b"k1": (b"\x00" * 8, False)}
        assert c.claim("b", [b"k2"]) == ({b"k2": (b"\x01" * 8, True)}, [], [])
        assert c.stats()["claims"] == 1  # k3, still b's

    asyncio.run(go())


def test_a_released_or_expired_claim_wakes_its_waiters_empty_handed() -> None:
    async def go() -> None:
        c = SharedCache(10, claim_ttl_s=0.05)
        c.claim("a", [b"k"])
        assert c.claim("b", [b"k"])[2] == [b"k"]
        waiter = asyncio.ensure_future(c.wait([b"k"], timeout=5))
        await asyncio.sleep(0.01)
        c.release("a", [b"k"])
        assert await waiter == {}  # nothing arrived: the waiter computes it itself
        c.claim("a", [b"j"])
        await asyncio.sleep(0.06)
        assert c.claim("b", [b"j"])[1] == [b"j"]  # a's claim expired: b takes it over
        assert await c.wait([b"never-claimed"], timeout=0.01) == {}

    asyncio.run(go())


def test_the_lru_keeps_size_entries() -> None:
    c = SharedCache(2)
    c.put("a", {b"1": (b"", False), b"2": (b"", False)})
    c.claim("a", [b"1"])  # touch 1
    c.put("a", {b"3": (b"", False)})
    assert set(c.claim("z", [b"1", b"2", b"3"])[0]) == {b"1", b"3"}
    assert SharedCache(0).claim("a", [b"x"])[1] == [b"x"]
