"""A Redis read-through cache for expensive, deterministic lookups (executor calls first).

Keys: ``tc:<namespace>:v<namespace version>:<sha256 of the key parts>``, where the parts are
what determines the answer (for the executor: task type, model version, input digest; the
namespace names the ai_model). Entries are hashes ``{value, created}``.

- TTL per namespace; every hit extends it again (sliding), never past ``max_age`` from creation.
- Invalidation: :meth:`TaskCache.bump` moves a whole namespace to a new version (old entries
  are never read again and age out); :meth:`TaskCache.invalidate` deletes one key and its
  in-flight computation's right to write, so a computation that started before an
  invalidation never stores its (possibly stale) answer.
- Stampede protection: one computation per key at a time (``SET NX`` lock with a token); the
  others wait for its entry, and compute themselves only if the holder disappears or they
  wait too long.
- Redis down: the call computes uncached, the failure is counted (``errors``) and the
  ``on_unavailable`` callback fires once; the cache object then stays uncached for its life
  (one batch), so a dead server costs one failed round trip, not one per task. The cache
  never fails a call.
- Counters per namespace: hits, misses, seconds spent in hits and in misses, hit ratio.

Lua scripts touch keys they build, so this targets a single Redis server (not a cluster).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_TTL_SECONDS = 3600
DEFAULT_MAX_AGE_SECONDS = 24 * 3600
LOCK_SECONDS = 60.0
WAIT_SECONDS = 30.0

# KEYS: [version key]; ARGV: [prefix, digest, ttl, max_age] -> {version, value or false}
_READ = """
local version = redis.call('GET', KEYS[1]) or '0'
local key = ARGV[1] .. ':v' .. version .. ':' .. ARGV[2]
local entry = redis.call('HMGET', key, 'value', 'created')
if not entry[1] then return {version, false} end
local now = tonumber(redis.call('TIME')[1])
local left = tonumber(ARGV[4]) - (now - tonumber(entry[2]))
if left <= 0 then redis.call('DEL', key) return {version, false} end
redis.call('EXPIRE', key, math.max(1, math.min(tonumber(ARGV[3]), left)))
return {version, entry[1]}
"""

# KEYS: [version key, entry key, lock key]; ARGV: [version read, lock token, value, ttl]
# stores only while the namespace is at the version read and the caller still holds the lock
_WRITE = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then redis.call('DEL', KEYS[3]) return 0 end
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
local now = redis.call('TIME')[1]
redis.call('HSET', KEYS[2], 'value', ARGV[3], 'created', now)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
redis.call('DEL', KEYS[3])
return 1
"""

# KEYS: [lock key]; ARGV: [token]
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def key_digest(parts: Mapping[str, Any]) -> str:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class NamespaceStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    hit_seconds: float = 0.0
    miss_seconds: float = 0.0

    @property
    def hit_ratio(self) -> float:
        calls = self.hits + self.misses
        return self.hits / calls if calls else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"hits": self.hits, "misses": self.misses, "errors": self.errors,
                "hit_seconds": self.hit_seconds, "miss_seconds": self.miss_seconds,
                "hit_ratio": self.hit_ratio}  # fmt: skip


class TaskCache:
    """Read-through cache over one Redis client (thread-safe; share one per batch).

    :param redis_client: a ``redis.Redis``.
    :param ttl_seconds: per-namespace TTL; a namespace not named uses ``default_ttl_seconds``.
        A namespace ``executor:gpt-4.1`` also matches a TTL given for ``executor``.
    :param max_age_seconds: the cap of sliding expiration.
    :param on_unavailable: called with the exception the first time Redis fails.
    """

    def __init__(
        self,
        redis_client: Any,
        *,
        ttl_seconds: Mapping[str, int] | None = None,
        default_ttl_seconds: int = DEFAULT_TTL_SECONDS,
        max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS,
        lock_seconds: float = LOCK_SECONDS,
        wait_seconds: float = WAIT_SECONDS,
        on_unavailable: Callable[[Exception], None] | None = None,
    ) -> None:
        self.redis = redis_client
        self.ttl_seconds = dict(ttl_seconds or {})
        self.default_ttl_seconds = default_ttl_seconds
        self.max_age_seconds = max_age_seconds
        self.lock_seconds = lock_seconds
        self.wait_seconds = wait_seconds
        self.on_unavailable = on_unavailable
        self.unavailable: Exception | None = None
        self.stats: dict[str, NamespaceStats] = defaultdict(NamespaceStats)
        self._lock = threading.Lock()
        self._read = redis_client.register_script(_READ)
        self._write = redis_client.register_script(_WRITE)
        self._release = redis_client.register_script(_RELEASE)

    # -- keys ----------------------------------------------------------------------------------

    def ttl_for(self, namespace: str) -> int:
        for name in (namespace, namespace.split(":", 1)[0]):
            if name in self.ttl_seconds:
                return int(self.ttl_seconds[name])
        return self.default_ttl_seconds

    @staticmethod
    def _version_key(namespace: str) -> str:
        return f"tc:{namespace}:version"

    @staticmethod
    def _entry_key(namespace: str, version: str, digest: str) -> str:
        return f"tc:{namespace}:v{version}:{digest}"

    @staticmethod
    def _lock_key(entry_key: str) -> str:
        return f"{entry_key}:lock"

    # -- reading -------------------------------------------------------------------------------

    def get_or_compute(self, namespace: str, parts: Mapping[str, Any], compute: Callable[[], Any]) -> tuple[Any, bool]:
        """(value, hit): the cached value for `parts`, or `compute()`'s, stored for the next."""
        import redis

        started = time.perf_counter()
        computed: list[Any] = []

        def compute_once() -> Any:  # Redis failing after the computation must not repeat it
            if not computed:
                computed.append(compute())
            return computed[0]

        if self.unavailable is not None:
            value, hit = compute_once(), False
        else:
            try:
                value, hit = self._get_or_compute(namespace, key_digest(parts), compute_once)
            except redis.RedisError as exc:
                self._note_unavailable(namespace, exc)
                value, hit = compute_once(), False
        self._count(namespace, hit, time.perf_counter() - started)
        return value, hit

    def _get_or_compute(self, namespace: str, digest: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
        prefix = f"tc:{namespace}"
        ttl = self.ttl_for(namespace)
        deadline = time.monotonic() + self.wait_seconds
        pause = 0.002
        def read() -> tuple[str, bytes | None]:
            version, raw = self._read(keys=[self._version_key(namespace)],
                                      args=[prefix, digest, ttl, self.max_age_seconds])  # fmt: skip
            return (version.decode() if isinstance(version, bytes) else str(version)), raw

        while True:
            version, raw = read()
            if raw:
                return json.loads(raw), True
            entry_key = self._entry_key(namespace, version, digest)
            lock_key, token = self._lock_key(entry_key), uuid.uuid4().hex
            if self.redis.set(lock_key, token, nx=True, px=int(self.lock_seconds * 1000)):
                # the previous holder may have stored the entry and let go between our read and
                # our lock: look again before computing
                again, raw = read()
                if raw or again != version:
                    self._release(keys=[lock_key], args=[token])
                    if raw:
                        return json.loads(raw), True
                    continue
                try:
                    value = compute()
                except BaseException:
                    self._release(keys=[lock_key], args=[token])
                    raise
                self._write(keys=[self._version_key(namespace), entry_key, lock_key],
                            args=[version, token, json.dumps(value), ttl])  # fmt: skip
                return value, False
            if time.monotonic() > deadline:  # the holder is stuck: answer without waiting on it
                return compute(), False
            time.sleep(pause)
            pause = min(pause * 2, 0.02)  # a waiter learns of the answer within 20 ms

    # -- invalidating --------------------------------------------------------------------------

    def bump(self, namespace: str) -> int:
        """Invalidate every entry of `namespace` at once; returns its new version."""
        return int(self.redis.incr(self._version_key(namespace)))

    def invalidate(self, namespace: str, parts: Mapping[str, Any]) -> None:
        """Delete the entry for `parts`, and the lock of a computation in flight for it."""
        version = self.redis.get(self._version_key(namespace))
        version = version.decode() if version else "0"
        entry_key = self._entry_key(namespace, version, key_digest(parts))
        self.redis.delete(entry_key, self._lock_key(entry_key))

    # -- reporting -----------------------------------------------------------------------------

    def _count(self, namespace: str, hit: bool, seconds: float) -> None:
        with self._lock:
            stats = self.stats[namespace]
            if hit:
                stats.hits += 1
                stats.hit_seconds += seconds
            else:
                stats.misses += 1
                stats.miss_seconds += seconds

    def _note_unavailable(self, namespace: str, exc: Exception) -> None:
        with self._lock:
            self.stats[namespace].errors += 1
            first = self.unavailable is None
            if first:
                self.unavailable = exc
        if first and self.on_unavailable is not None:
            self.on_unavailable(exc)

    def report(self) -> dict[str, dict[str, float]]:
        """Per namespace: hits, misses, errors, seconds, hit ratio (tune TTLs with it)."""
        with self._lock:
            return {ns: s.as_dict() for ns, s in sorted(self.stats.items())}
