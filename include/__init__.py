"""The platform's domain library: importable without Airflow, tested without a scheduler.

One package per concern: `execution` (the task queue, its drains, cache and executor client),
`backup` (verified backups and restores), `migrations` (reversible schema changes), `audit`
(gates, probes, indicators, digest), `observability` (alerts, metrics, alarms, security events,
dashboard panels) and `offers` (the offer model, policy, bandit and ROI); `ids` holds the names
every layer shares. Nothing here imports Airflow or the local stack (`devstack`).
"""
