"""The project's Airflow provider: hooks (one per service), operators, notifiers, the DAGs' task
steps and the ops dashboard, adapting the domain library in `include` to Airflow.

Installed as the distribution ``execplatform-airflow`` (``make`` does it), whose
``apache_airflow_provider`` entry point is :func:`get_provider_info`: that is how Airflow 3 learns
of the Stripe and AI-executor connection types and shows their fields in the connection form.
"""

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """The provider's metadata, as Airflow's ProvidersManager reads it (no imports: it runs in
    every Airflow process at start-up)."""
    return {
        "package-name": "execplatform-airflow",
        "name": "Execution platform",
        "description": "Hooks, operators and notifiers of the AI execution-task platform.",
        "versions": [__version__],
        "connection-types": [
            {
                "hook-class-name": "execplatform.hooks.stripe_hook.StripeHook",
                "hook-name": "Stripe",
                "connection-type": "stripe",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "extra"],
                    "relabeling": {"password": "Secret key", "host": "API base"},
                    "placeholders": {
                        "host": "empty for https://api.stripe.com",
                        "password": "sk_live_… or sk_test_…",
                    },
                },
            },
            {
                "hook-class-name": "execplatform.hooks.task_executor_hook.TaskExecutorHook",
                "hook-name": "AI task executor",
                "connection-type": "ai_executor",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema"],
                    "relabeling": {"host": "Base URL", "password": "Token or password"},
                    "placeholders": {
                        "host": "https://executor.internal",
                        "login": "only for HTTP basic auth; empty: the password is a bearer token",
                    },
                },
                "conn-fields": {
                    "timeout_seconds": {
                        "label": "Timeout (seconds)",
                        "description": "each request's deadline, the whole answer included; default 30",
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 3600},
                    },
                    "retries": {
                        "label": "Retries",
                        "description": "of timeouts, 5xx and 429; default 3",
                        "schema": {"type": ["integer", "null"], "minimum": 0, "maximum": 10},
                    },
                    "max_response_bytes": {
                        "label": "Largest answer (bytes)",
                        "description": "a larger answer fails its task unread; default 16777216 (16 MiB)",
                        "schema": {"type": ["integer", "null"], "minimum": 1024},
                    },
                    "max_retry_after_seconds": {
                        "label": "Longest Retry-After (seconds)",
                        "description": "a 429 asking for longer is left to the queue's retry; default 30",
                        "schema": {"type": ["number", "null"], "minimum": 0, "maximum": 600},
                    },
                    "allow_insecure_http": {
                        "label": "Allow plain http",
                        "description": "to another machine: credentials and payloads go in clear",
                        "schema": {"type": ["boolean", "null"]},
                    },
                },
            },
        ],
        "notifications": ["execplatform.notifiers.alert_notifier.PlatformAlertNotifier"],
        # Stripe objects as assets, so that the hook lineage collector reports them to OpenLineage
        "asset-uris": [
            {
                "schemes": ["stripe"],
                "handler": "execplatform.lineage.sanitize_stripe_uri",
                "to_openlineage_converter": "execplatform.lineage.stripe_to_openlineage",
            }
        ],
    }
