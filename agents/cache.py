"""The swarm's shared embedding cache: one model computation per distinct content, across every migrator.

Each migrator has its own LRU (in :class:`~model.embedder.LlamaEmbedder`), but a table whose rows repeat each
other's content (licence headers, generated code, copied snippets) spreads the copies over every shard, so each
migrator would compute each content once. The coordinator actor holds this cache, keyed by a digest of the
model and the text, and also hands out *claims*: the first migrator to ask for a missing key computes it, and a
migrator asking for a key claimed by another waits for that result instead of computing it again. A claim whose
owner dies or fails is released (or its waiters time out) and the waiters compute the text themselves, so the
cache can only save work, never lose a row.

:class:`SharedCache` lives in the coordinator (asyncio); :class:`CacheClient` is the migrator's side.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from typing import Any

from swarm.core.log import get_logger

log = get_logger()

#: A key's value: the vector as float32 bytes, and whether the text was truncated to the model's context.
Entry = tuple[bytes, bool]


def cache_key(model_id: str, prefix: str, text: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (model_id, prefix, text):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.digest()


class SharedCache:
    """An LRU of ``size`` entries plus the claims in flight. Used from one event loop (the coordinator's)."""

    def __init__(self, size: int, claim_ttl_s: float = 300.0) -> None:
        self.size = size
        self.claim_ttl_s = claim_ttl_s
        self._data: OrderedDict[bytes, Entry] = OrderedDict()
        self._claims: dict[bytes, tuple[str, float, asyncio.Event]] = {}
        self.hits = 0
        self.claimed = 0
        self.waited = 0

    def claim(self, owner: str, keys: list[bytes]) -> tuple[dict[bytes, Entry], list[bytes], list[bytes]]:
        """Split ``keys`` into (found, claimed by ``owner`` now: compute them, claimed by others: wait)."""
        found: dict[bytes, Entry] = {}
        mine: list[bytes] = []
        theirs: list[bytes] = []
        now = time.monotonic()
        for k in keys:
            hit = self._data.get(k)
            if hit is not None:
                self._data.move_to_end(k)
                found[k] = hit
                continue
            c = self._claims.get(k)
            if c is not None and c[0] != owner and now - c[1] < self.claim_ttl_s:
                theirs.append(k)
                continue
            if c is not None:
                c[2].set()  # an expired or own older claim: wake its waiters (they compute it themselves)
            self._claims[k] = (owner, now, asyncio.Event())
            mine.append(k)
        self.hits += len(found)
        self.claimed += len(mine)
        self.waited += len(theirs)
        return found, mine, theirs

    def put(self, owner: str, items: dict[bytes, Entry]) -> None:
        for k, v in items.items():
            if self.size > 0:
                self._data[k] = v
                self._data.move_to_end(k)
            c = self._claims.pop(k, None)
            if c is not None:
                c[2].set()
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def release(self, owner: str, keys: list[bytes] | None = None) -> None:
        """Drop ``owner``'s claims on ``keys`` (all of them when None): their waiters compute them."""
        for k in list(self._claims) if keys is None else keys:
            c = self._claims.get(k)
            if c is not None and c[0] == owner:
                del self._claims[k]
                c[2].set()

    async def wait(self, keys: list[bytes], timeout: float) -> dict[bytes, Entry]:
        """Wait up to ``timeout`` seconds for other migrators' claims on ``keys``; return what arrived."""
        events = [c[2] for k in keys if (c := self._claims.get(k)) is not None]
        if events:
            try:
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout)
            except TimeoutError:
                pass
        return {k: v for k in keys if (v := self._data.get(k)) is not None}

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self._data),
            "size": self.size,
            "claims": len(self._claims),
            "hits": self.hits,
            "claimed": self.claimed,
            "waited": self.waited,
        }


class CacheClient:
    """A migrator's handle on the coordinator's :class:`SharedCache`. Every failure degrades to "not cached"."""

    def __init__(self, owner: str, namespace: str = "swarm", actor: str = "coordinator") -> None:
        self.owner = owner
        self._namespace, self._actor = namespace, actor
        self._handle: Any = None
        self.errors = 0

    def _coord(self) -> Any:
        import ray

        if self._handle is None:
            self._handle = ray.get_actor(self._actor, namespace=self._namespace)
        return self._handle

    def _get(self, method: str, *args: Any, timeout: float = 10.0) -> Any:
        import ray

        try:
            return ray.get(getattr(self._coord(), method).remote(*args), timeout=timeout)
        except Exception as e:  # the coordinator restarting, or gone: work on without the shared cache
            self._handle = None
            self.errors += 1
            if self.errors <= 3 or self.errors % 100 == 0:
                log.warning("cache.unavailable", method=method, error=type(e).__name__, errors=self.errors)
            return None

    def claim(self, keys: list[bytes]) -> tuple[dict[bytes, Entry], list[bytes], list[bytes]]:
        got = self._get("cache_claim", self.owner, keys)
        return got if got is not None else ({}, list(keys), [])

    def put(self, items: dict[bytes, Entry]) -> None:
        if items:
            self._get("cache_put", self.owner, items)

    def release(self, keys: list[bytes]) -> None:
        if keys:
            self._get("cache_release", self.owner, keys)

    def wait(self, keys: list[bytes], timeout: float) -> dict[bytes, Entry]:
        got = self._get("cache_wait", keys, timeout, timeout=timeout + 10.0)
        return got or {}
