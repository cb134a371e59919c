"""Execution tasks: the Postgres-backed queue (`task_queue`), draining it in parallel batches
(`drain`), the handlers per task type and their payload validation (`task_handlers`), the AI
executor's HTTP client (`executor_client`), the Redis read-through cache with its cache keys
(`task_cache`), and where the time goes (`bottleneck`).
"""
