"""Names every layer shares: the connection ids the project reads and its DAG ids.

They are a contract with the deployment (connections are configured under these ids) and with
the alarms (which watch each DAG and connection by name). The Airflow objects built on them
(Assets, default args) are in ``execplatform.dag_defaults``.
"""

APP_DB = "app_db"  # postgres: the platform's database
AWS = "aws_default"  # aws: S3 (backups, model artifacts) and CloudWatch
STRIPE = "stripe_default"  # stripe: secret key as password, API base as host
SMTP = "smtp_default"  # smtp: alert and digest mail
REDIS = "redis_default"  # redis: the task cache
TASK_EXECUTOR = "task_executor"  # ai_executor (or http): the AI executor that runs execution tasks

CONNECTION_IDS = (APP_DB, AWS, STRIPE, SMTP, REDIS, TASK_EXECUTOR)
# postgres: a server of its own where db_migrate rehearses (optional: without it, a run refuses
# to rehearse unless told to use app_db's server)
REHEARSAL_DB = "rehearsal_db"

DAG_IDS = (
    "platform_healthcheck",
    "db_backup",
    "db_restore",
    "db_migrate",
    "task_batch",
    "adversarial_audit",
    "offer_model_retrain",
    "offer_feedback",
    "roi_sync",
    "fsar_intake",
)

# the execution tasks' types (execution_tasks.task_type), each with its own handler and inputs
TASK_TYPES = ("implementation", "self_improvement", "idea", "idea_implementation")

# an FSAR report's id (include.audit.fsar), for the params that name one; the table's CHECK
# (revision 0010) spells the same
FSAR_REPORT_ID = r"fsar_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
