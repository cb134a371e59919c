"""The task cache's Redis (`redis_default`), through the provider's `RedisHook`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.redis.hooks.redis import RedisHook
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from include.ids import REDIS

if TYPE_CHECKING:
    from include.execution.task_cache import TaskCache

# An outage must cost little: the tasks then run uncached. Short socket timeouts, and one quick
# retry (a reconnect after a Redis restart) instead of redis-py's ten, up to 1 s apart, which
# held up a drain's first cache call for seconds before it went on uncached.
SOCKET_TIMEOUT_SECONDS = 2
CACHE_RETRY = Retry(ExponentialBackoff(cap=0.1, base=0.05), retries=1)


class TaskCacheHook(RedisHook):
    """
    The execution-task cache on a ``redis`` connection (default ``redis_default``).

    Built on the provider's :class:`RedisHook`, so the connection's TLS (``ssl``,
    ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``...), ACL user (login) and ``db`` extras
    apply to the cache as they do to the healthcheck; only the socket timeouts are the cache's
    own (short, and a single quick retry, since a Redis outage only costs the cache).

    :param redis_conn_id: the connection id.
    """

    hook_name = "Task cache (Redis)"

    def __init__(self, redis_conn_id: str = REDIS, **kwargs: Any) -> None:
        super().__init__(redis_conn_id=redis_conn_id, **kwargs)

    def get_cache(self, **options: Any) -> TaskCache:
        """A :class:`~include.execution.task_cache.TaskCache` on this connection's Redis."""
        from include.execution.task_cache import TaskCache

        client = self.get_conn()
        pool_kwargs = client.connection_pool.connection_kwargs
        pool_kwargs["socket_timeout"] = pool_kwargs["socket_connect_timeout"] = SOCKET_TIMEOUT_SECONDS
        client.set_retry(CACHE_RETRY)
        return TaskCache(client, **options)
