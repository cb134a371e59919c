"""A Redis read-through cache for expensive, deterministic lookups (executor calls first).

Keys: ``tc:<namespace>:v<namespace version>:<sha256 of the key parts>``, where the parts are
what determines the answer (for the executor: task type, model version, normalised input; the
namespace names the ai_model). Entries are hashes ``{value, created}``.

- TTL per namespace; every hit extends it again (sliding), never past ``max_age`` from creation.
- Invalidation: :meth:`TaskCache.bump` moves a whole namespace to a new version (old entries
  are never read again and age out); :meth:`TaskCache.invalidate` deletes one key and its
  in-flight computation's right to write, so a computation that started before an
  invalidation never stores its (possibly stale) answer.
- Stampede protection: one computation per key at a time (``SET NX`` lock with a token, taken
  by the same script that found the entry missing); the others wait for its entry (in this
  process, woken the moment it is stored), and compute themselves only if the holder
  disappears or they wait too long.
- Group reads and writes: lookups made at the same time by the threads of a process share ONE
  round trip (one script call reads many keys): the first caller sends what is pending, and
  whoever arrives meanwhile goes in the next round trip, sent by the first of them; so do the
  writes of computed answers. Every lookup is still a read of Redis made after the call began,
  so no hit outlives an invalidation done before it.
- Batch reads: :meth:`TaskCache.get_many` reads the entries of a whole batch of calls known in
  advance (a claimed batch of tasks) in one script call, each distinct key once (a batch repeats
  its popular inputs), from one thread: the hits are answered
  without a thread hand-off each (on this kind of machine a cross-thread wake-up costs more than
  the hit itself); the misses then go through :meth:`get_or_compute` as usual. With
  ``reserve=True`` the same call takes the lock of each missing entry, so the
  :meth:`get_or_compute` that follows computes at once, without a lookup of its own
  (:meth:`release_reservations` frees the locks of the computations that never came). Nothing is
  kept in process memory: each answer is a read of Redis made after the caller asked.
- Values that are not JSON: an answer holding NaN or an infinity (which `json.dumps` writes, but
  no JSON reader or jsonb takes) is never stored, so it cannot be served for a day to every task
  with that input; an entry that does not read back as strict JSON (written by anything else, or
  damaged) counts as a miss, and is deleted (unless rewritten meanwhile), so one bad entry never
  fails a batch (``discarded``).
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_TTL_SECONDS = 3600
DEFAULT_MAX_AGE_SECONDS = 24 * 3600
LOCK_SECONDS = 60.0
WAIT_SECONDS = 30.0
MAX_GROUPED = 256  # lookups, or writes, per round trip of get_or_compute's grouped calls
MAX_BATCH_LOOKUPS = 1000  # per script call of get_many (Redis runs a script alone: keep it short)

# KEYS: one version key per lookup; ARGV: [max_age, lock ms, then per lookup: prefix, digest,
# ttl, lock token ('' for none)] -> per lookup {version, value or false, 1 if the lock was taken}.
# A hit slides the entry's TTL (never past max_age from its creation); a miss with a token
# takes the key's lock in the same step, so no other caller can slip in between.
_READ_MANY = """
local now = tonumber(redis.call('TIME')[1])
local max_age, lock_ms = tonumber(ARGV[1]), ARGV[2]
local out = {}
for i = 1, #KEYS do
  local b = 2 + (i - 1) * 4
  local ttl, token = tonumber(ARGV[b + 3]), ARGV[b + 4]
  local version = redis.call('GET', KEYS[i]) or '0'
  local key = ARGV[b + 1] .. ':v' .. version .. ':' .. ARGV[b + 2]
  local entry = redis.call('HMGET', key, 'value', 'created')
  local value, locked = false, 0
  if entry[1] then
    local left = max_age - (now - tonumber(entry[2]))
    if left <= 0 then redis.call('DEL', key)
    else redis.call('EXPIRE', key, math.max(1, math.min(ttl, left))) value = entry[1] end
  end
  if not value and token ~= '' and redis.call('SET', key .. ':lock', token, 'NX', 'PX', lock_ms) then locked
      = 1 end
  out[i] = {version, value, locked}
end
return out
"""

# get_many's read, for lookups grouped by namespace: KEYS: one version key per namespace; ARGV:
# [max_age, lock ms, lock token ('' for none), then per namespace: prefix, ttl, its digests
# concatenated (64 hex each)] -> ONE JSON text, an array: the version read per namespace, then
# per lookup `[value]` for a hit, `1` for a miss whose lock this call took (with the token),
# `0` for another miss (values are JSON texts: one json.loads reads the whole batch). Hits
# slide as in _READ_MANY.
_READ_BATCH = """
local now = tonumber(redis.call('TIME')[1])
local max_age, lock_ms, token = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local versions, out = {}, {}
for g = 1, #KEYS do
  local prefix, ttl, digests = ARGV[g * 3 + 1], tonumber(ARGV[g * 3 + 2]), ARGV[g * 3 + 3]
  local version = redis.call('GET', KEYS[g]) or '0'
  versions[g] = version
  for s = 1, #digests, 64 do
    local key = prefix .. ':v' .. version .. ':' .. string.sub(digests, s, s + 63)
    local entry = redis.call('HMGET', key, 'value', 'created')
    local found = '0'
    if entry[1] then
      local left = max_age - (now - tonumber(entry[2]))
      if left <= 0 then redis.call('DEL', key)
      else redis.call('EXPIRE', key, math.max(1, math.min(ttl, left))) found = '[' .. entry[1] .. ']' end
    end
    if found == '0' and token ~= '' and redis.call('SET', key .. ':lock', token, 'NX', 'PX', lock_ms) then
      found = '1'
    end
    out[#out + 1] = found
  end
end
return '[' .. table.concat(versions, ',') .. ',' .. table.concat(out, ',') .. ']'
"""

# KEYS: per write [version key, entry key, lock key]; ARGV: per write [version read, lock token,
# value, ttl] -> per write 1 if stored. A write stores only while the namespace is at the version
# read and the writer still holds the lock.
_WRITE_MANY = """
local now = redis.call('TIME')[1]
local out = {}
for i = 1, #KEYS / 3 do
  local version_key, entry_key, lock_key = KEYS[i * 3 - 2], KEYS[i * 3 - 1], KEYS[i * 3]
  local version, token, value, ttl = ARGV[i * 4 - 3], ARGV[i * 4 - 2], ARGV[i * 4 - 1], ARGV[i * 4]
  out[i] = 0
  if (redis.call('GET', version_key) or '0') ~= version then redis.call('DEL', lock_key)
  elseif redis.call('GET', lock_key) == token then
    redis.call('HSET', entry_key, 'value', value, 'created', now)
    redis.call('EXPIRE', entry_key, tonumber(ttl))
    redis.call('DEL', lock_key)
    out[i] = 1
  end
end
return out
"""

# _READ_BATCH's lookups again, when its JSON answer did not parse (an entry holding what is not
# JSON): KEYS and ARGV as for _READ_BATCH -> the version read per namespace, then per lookup
# {raw value or false, 1 if its lock holds the token}. It slides nothing and takes no lock: the
# _READ_BATCH call before it did both.
_READ_BATCH_RAW = """
local token = ARGV[3]
local out = {}
for g = 1, #KEYS do
  local version = redis.call('GET', KEYS[g]) or '0'
  out[#out + 1] = version
  local prefix, digests = ARGV[g * 3 + 1], ARGV[g * 3 + 3]
  for s = 1, #digests, 64 do
    local key = prefix .. ':v' .. version .. ':' .. string.sub(digests, s, s + 63)
    local mine = 0
    if token ~= '' and redis.call('GET', key .. ':lock') == token then mine = 1 end
    out[#out + 1] = {redis.call('HGET', key, 'value') or false, mine}
  end
end
return out
"""

# KEYS: [entry key]; ARGV: [the value found] -> 1 if deleted (not when rewritten meanwhile)
_DISCARD = """
if redis.call('HGET', KEYS[1], 'value') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: [lock key]; ARGV: [token]
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _Call:
    """One pending call of a group: what to send, and where its answer goes."""

    __slots__ = ("item", "ready", "result", "error")

    def __init__(self, item: tuple) -> None:
        self.item = item
        self.ready = threading.Event()
        self.result: Any = _Call  # not answered yet (no answer is this class)
        self.error: Exception | None = None


class _Grouped:
    """Calls made at the same time by the threads of a process share ONE script call: the first
    caller sends what is pending, and whoever arrives meanwhile goes in the next script call,
    sent by the first of them. `send(items)` makes one script call and returns one result per
    item; if it raises, every call of that round trip raises it."""

    def __init__(self, send: Callable[[list[tuple]], Sequence[Any]], limit: int) -> None:
        self._send, self._limit = send, limit
        self._lock = threading.Lock()
        self._pending: list[_Call] = []
        self._sending = False  # a round trip is on its way (its sender hands over to the next)

    def __call__(self, *item: Any) -> Any:
        call = _Call(item)
        with self._lock:
            self._pending.append(call)
            send, self._sending = not self._sending, True
        if not send:
            call.ready.wait()
            send = call.result is _Call and call.error is None  # the previous sender handed over
        if send:
            self._send_pending()
        if call.error is not None:
            raise call.error
        return call.result

    def _send_pending(self) -> None:
        with self._lock:
            batch, self._pending = self._pending[: self._limit], self._pending[self._limit :]
        try:
            for call, result in zip(batch, self._send([call.item for call in batch]), strict=True):
                call.result = result
        except Exception as exc:
            for call in batch:
                call.error = exc
        finally:
            with self._lock:  # the next round trip is sent by the first call still waiting
                if self._pending:
                    self._pending[0].ready.set()
                else:
                    self._sending = False
            for call in batch:
                call.ready.set()


_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)
_VALUE_JSON = json.JSONEncoder(allow_nan=False)  # what a stored answer is written with


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant)  # NaN, Infinity: not JSON


def _strict_loads(raw: bytes | str) -> Any:
    """A stored value (or a batch answer) read as strict JSON; ValueError otherwise."""
    return _STRICT_JSON.decode(raw.decode() if isinstance(raw, bytes) else raw)


def key_digest(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(_CANONICAL_JSON.encode(parts).encode()).hexdigest()


@dataclass
class NamespaceStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    discarded: int = 0  # entries that did not read back as JSON (deleted), answers not storable
    hit_seconds: float = 0.0
    miss_seconds: float = 0.0

    @property
    def hit_ratio(self) -> float:
        calls = self.hits + self.misses
        return self.hits / calls if calls else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "discarded": self.discarded,
            "hit_seconds": self.hit_seconds,
            "miss_seconds": self.miss_seconds,
            "hit_ratio": self.hit_ratio,
        }


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
        self._read_many = redis_client.register_script(_READ_MANY)
        self._read_batch = redis_client.register_script(_READ_BATCH)
        self._read_batch_raw = redis_client.register_script(_READ_BATCH_RAW)
        self._discard = redis_client.register_script(_DISCARD)
        self._lookups = _Grouped(self._send_lookups, MAX_GROUPED)
        self._writes = _Grouped(self._send_writes, MAX_GROUPED)
        self._computing: dict[str, threading.Event] = {}  # entry keys computed in this process
        # (namespace, digest) -> (version, lock token, lock expiry): locks get_many took for a compute to come
        self._reserved: dict[tuple[str, str], tuple[str, str, float]] = {}
        self._stored: set[tuple[str, str]] = set()  # reserved computations whose answer was stored
        self._write_many = redis_client.register_script(_WRITE_MANY)
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

    def get_or_compute(
        self, namespace: str, parts: Mapping[str, Any], compute: Callable[[], Any]
    ) -> tuple[Any, bool]:
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
                digest = key_digest(parts)
                with self._lock:
                    reserved = self._reserved.pop((namespace, digest), None)
                if reserved is not None and reserved[2] < time.monotonic():
                    reserved = None  # its lock has expired: look again
                value, hit = self._get_or_compute(namespace, digest, compute_once, reserved and reserved[:2])
            except redis.RedisError as exc:
                self._note_unavailable(namespace, exc)
                value, hit = compute_once(), False
        self._count(namespace, hit, time.perf_counter() - started)
        return value, hit

    def _get_or_compute(
        self,
        namespace: str,
        digest: str,
        compute: Callable[[], Any],
        reserved: tuple[str, str] | None = None,
    ) -> tuple[Any, bool]:
        deadline = time.monotonic() + self.wait_seconds
        pause = 0.002
        reserved_for_us = reserved is not None
        discarded = False
        while True:
            if reserved is not None:  # get_many found it missing and took its lock for us
                (version, token), raw, locked, reserved = reserved, None, True, None
            else:
                token = uuid.uuid4().hex
                version, raw, locked = self._lookup(namespace, digest, token)
            entry_key = self._entry_key(namespace, version, digest)
            if raw:
                try:
                    return _strict_loads(raw), True
                except ValueError:  # not JSON: a miss, and gone for the next caller
                    self._drop_bad_entry(namespace, entry_key, raw)
                    if discarded:  # back again at once (another writer): answer without the cache
                        return compute(), False
                    discarded = True
                    continue
            lock_key = self._lock_key(entry_key)
            if locked:
                done = threading.Event()
                with self._lock:
                    self._computing[entry_key] = done
                try:
                    value = compute()
                    text = self._storable(namespace, value)
                except BaseException:
                    self._release(keys=[lock_key], args=[token])
                    raise
                else:
                    stored = text is not None and self._writes(
                        (self._version_key(namespace), entry_key, lock_key),
                        (version, token, text, self.ttl_for(namespace)),
                    )
                    if text is None:
                        self._release(keys=[lock_key], args=[token])
                    if stored and reserved_for_us:
                        with self._lock:
                            self._stored.add((namespace, digest))
                finally:
                    with self._lock:
                        self._computing.pop(entry_key, None)
                    done.set()
                return value, False
            if time.monotonic() > deadline:  # the holder is stuck: answer without waiting on it
                return compute(), False
            with self._lock:
                here = self._computing.get(entry_key)
            if here is not None:  # computed by a thread of ours: woken when it is stored
                here.wait(max(0.0, deadline - time.monotonic()))
            else:  # by another process: look again soon
                time.sleep(pause)
                pause = min(pause * 2, 0.02)

    def _storable(self, namespace: str, value: Any) -> str | None:
        """`value` as the JSON text stored, or None (counted as discarded) for a value that JSON
        cannot hold: NaN, an infinity, or what is not JSON at all."""
        try:
            return _VALUE_JSON.encode(value)
        except (TypeError, ValueError):
            with self._lock:
                self.stats[namespace].discarded += 1
            return None

    def _drop_bad_entry(self, namespace: str, entry_key: str, raw: bytes) -> None:
        """Delete an entry that does not read back as JSON, unless it was rewritten meanwhile."""
        self._discard(keys=[entry_key], args=[raw])
        with self._lock:
            self.stats[namespace].discarded += 1

    def _lookup(self, namespace: str, digest: str, token: str) -> tuple[str, bytes | None, bool]:
        """(version, raw value or None, lock taken): this lookup goes to Redis with whatever
        other lookups are pending at that moment, in one script call."""
        version, raw, locked = self._lookups(
            self._version_key(namespace),
            (f"tc:{namespace}", digest, self.ttl_for(namespace), token),
        )
        return (version.decode() if isinstance(version, bytes) else str(version)), raw, bool(locked)

    def _send_lookups(self, lookups: list[tuple]) -> list:
        args: list[Any] = [self.max_age_seconds, int(self.lock_seconds * 1000)]
        for _, lookup_args in lookups:
            args += lookup_args
        return self._read_many(keys=[version_key for version_key, _ in lookups], args=args)

    def _send_writes(self, writes: list[tuple]) -> list:
        """Writes (keys, args) pending at the same moment, in one script call (as lookups)."""
        return self._write_many(
            keys=[k for keys, _ in writes for k in keys],
            args=[a for _, args in writes for a in args],
        )

    def get_many(
        self, lookups: Sequence[tuple[str, Mapping[str, Any]]], reserve: bool = False
    ) -> list[tuple[bool, Any]]:
        """(found, value) per (namespace, parts), read in one script call per MAX_BATCH_LOOKUPS
        distinct keys. Lookups of the same key share one read and one value (a batch repeats its
        popular inputs): treat the values as read-only.

        Hits slide their TTL and are counted (each with an equal share of the round trip's
        time); misses are not counted here: the caller computes them through
        :meth:`get_or_compute`, which counts them and protects them from stampedes. With
        `reserve`, the lock of each missing entry no one else computes is taken for that
        get_or_compute (release the unused ones with :meth:`release_reservations`). With Redis
        down nothing is found (the outage noted as in get_or_compute); this never raises for it."""
        import redis

        if not lookups or self.unavailable is not None:
            return [(False, None)] * len(lookups)
        started = time.perf_counter()
        found: list[tuple[bool, Any]] = [(False, None)] * len(lookups)
        slots: dict[tuple[str, str], list[int]] = defaultdict(list)  # (namespace, digest) -> its lookups
        digest_of: dict[int, str] = {}  # id(parts) -> digest: lookups may share their parts object
        for i, (namespace, parts) in enumerate(lookups):
            digest = digest_of.get(id(parts))
            if digest is None:
                digest = digest_of[id(parts)] = key_digest(parts)
            slots[namespace, digest].append(i)
        keys = list(slots)
        token = uuid.uuid4().hex if reserve else ""
        reserved: dict[tuple[str, str], tuple[str, str, float]] = {}
        hits: dict[str, int] = defaultdict(int)
        try:
            for first in range(0, len(keys), MAX_BATCH_LOOKUPS):
                by_namespace: dict[str, list[str]] = defaultdict(list)
                for namespace, digest in keys[first : first + MAX_BATCH_LOOKUPS]:
                    by_namespace[namespace].append(digest)
                args: list[Any] = [self.max_age_seconds, int(self.lock_seconds * 1000), token]
                for namespace, digests in by_namespace.items():
                    args += (f"tc:{namespace}", self.ttl_for(namespace), "".join(digests))
                locked_until = time.monotonic() + self.lock_seconds
                version_keys = [self._version_key(ns) for ns in by_namespace]
                try:
                    answers = _strict_loads(self._read_batch(keys=version_keys, args=args))
                except ValueError:  # an entry holds what is not JSON: read them one by one
                    answers = self._reread_batch(version_keys, args, by_namespace)
                versions = dict(zip(by_namespace, answers, strict=False))
                order = [(ns, digest) for ns, digests in by_namespace.items() for digest in digests]
                for key, answer in zip(order, answers[len(by_namespace) :], strict=True):
                    if answer == 1:
                        reserved[key] = (str(versions[key[0]]), token, locked_until)
                    elif answer != 0:
                        for i in slots[key]:
                            found[i] = (True, answer[0])
                        hits[key[0]] += len(slots[key])
        except redis.RedisError as exc:
            self._note_unavailable(lookups[0][0], exc)
            return [(False, None)] * len(lookups)
        share = (time.perf_counter() - started) / max(1, sum(hits.values()))
        with self._lock:
            self._reserved.update(reserved)
            for namespace, n in hits.items():
                self.stats[namespace].hits += n
                self.stats[namespace].hit_seconds += share * n
        return found

    def _reread_batch(
        self, version_keys: list[str], args: list[Any], by_namespace: dict[str, list[str]]
    ) -> list:
        """_READ_BATCH's answer rebuilt from each entry read apart (its JSON text did not parse):
        entries that are not JSON are deleted and answered as misses (their lock was not taken:
        they were found)."""
        raw = self._read_batch_raw(keys=version_keys, args=args)
        versions = [v.decode() if isinstance(v, bytes) else str(v) for v in raw[: len(by_namespace)]]
        answers: list[Any] = list(versions)
        lookups = [(ns, digest) for ns, digests in by_namespace.items() for digest in digests]
        version_of = dict(zip(by_namespace, versions, strict=True))
        for (namespace, digest), (value, mine) in zip(lookups, raw[len(by_namespace) :], strict=True):
            if value is None:
                answers.append(1 if mine else 0)
                continue
            try:
                answers.append([_strict_loads(value)])
            except ValueError:
                self._drop_bad_entry(
                    namespace, self._entry_key(namespace, version_of[namespace], digest), value
                )
                answers.append(0)
        return answers

    def serve_waiters(self, namespace: str, parts: Mapping[str, Any], waiters: int) -> bool:
        """Whether the computation of `parts` that :meth:`get_many` reserved stored its answer,
        which proves no invalidation came between the reservation and the store. If so, the
        `waiters` callers that asked for it meanwhile may take that answer: they are counted as
        hits. If not, they must read the entry (or compute) themselves. Call it once per
        reserved computation that ended (it forgets the computation)."""
        key = (namespace, key_digest(parts))
        with self._lock:
            if key not in self._stored:
                return False
            self._stored.discard(key)
            self.stats[namespace].hits += waiters
        return True

    def release_reservations(self) -> int:
        """Free the locks get_many took for computations that never came; how many."""
        import redis

        with self._lock:
            reserved, self._reserved = self._reserved, {}
            self._stored.clear()
        if not reserved:
            return 0
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for (namespace, digest), (version, token, _) in reserved.items():
                    self._release(
                        keys=[self._lock_key(self._entry_key(namespace, version, digest))],
                        args=[token],
                        client=pipe,
                    )
                pipe.execute()
        except redis.RedisError as exc:  # the locks expire on their own
            self._note_unavailable(next(iter(reserved))[0], exc)
        return len(reserved)

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
