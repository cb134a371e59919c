"""airflow-init's bucket step: the S3 buckets the DAGs write to ($BACKUP_BUCKET, $MODEL_BUCKET)
exist in `aws_default`'s account. Missing ones are created where $CREATE_BUCKETS is true (a
stand-in such as moto); elsewhere the step fails naming them, so a deployment never starts with
a backup that has nowhere to go.

    python -m execplatform.steps.bucket_steps
"""

from __future__ import annotations

import os
import sys

from include.ids import AWS


def bucket_names() -> list[str]:
    return [
        os.environ.get("BACKUP_BUCKET", "execplatform-backups"),
        os.environ.get("MODEL_BUCKET", "execplatform-models"),
    ]


def ensure_buckets(names: list[str], create: bool, aws_conn_id: str = AWS) -> list[str]:
    """The buckets of `names` that were missing (and, with `create`, are now created)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=aws_conn_id)
    missing = [name for name in names if not hook.check_for_bucket(name)]
    if missing and not create:
        raise RuntimeError(
            f"S3 bucket(s) {', '.join(missing)} do not exist in {aws_conn_id}'s account: create them "
            "(or set CREATE_BUCKETS=true to let this step do it)"
        )
    for name in missing:
        hook.create_bucket(bucket_name=name)
    return missing


def main() -> int:
    create = os.environ.get("CREATE_BUCKETS", "false").strip().lower() == "true"
    names = bucket_names()
    try:
        created = ensure_buckets(names, create)
    except RuntimeError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    done = f" (created {', '.join(created)})" if created else ""
    sys.stdout.write(f"S3 buckets {', '.join(names)}: present{done}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
