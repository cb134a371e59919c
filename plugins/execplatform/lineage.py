"""What tasks read and write, for OpenLineage, named by its dataset naming: the app database as
``postgres://host:port`` + ``database`` (or ``database.public.table``), S3 as ``s3://bucket`` + the
key prefix. Imported when the OpenLineage listener asks, never at parse time."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openlineage.client.event_v2 import Dataset

    from execplatform.hooks.app_db_hook import AppDatabaseHook

APP_SCHEMA = "public"  # where the revisions in include/migrations/versions create the tables


def postgres_namespace(db: AppDatabaseHook) -> str:
    conn = db.connection
    return f"postgres://{conn.host}:{conn.port or 5432}"


def app_database(db: AppDatabaseHook) -> Dataset:
    """The app database as a whole (a dump reads all of it)."""
    from openlineage.client.event_v2 import Dataset

    return Dataset(namespace=postgres_namespace(db), name=db.database_name)


def s3_prefix(location: str) -> Dataset:
    """An ``s3://bucket/prefix/`` folder."""
    from openlineage.client.event_v2 import Dataset

    from include.backup.catalog import split_location

    bucket, prefix = split_location(location)
    return Dataset(namespace=f"s3://{bucket}", name=prefix.strip("/"))


def report_changed_tables(db: AppDatabaseHook, tables: list[str]) -> None:
    """The tables a task changed, as its outputs. A @task has no get_openlineage_facets_*: this
    goes through Airflow's hook lineage collector, which the OpenLineage listener reads when the
    task completes (and which costs nothing when OpenLineage is off)."""
    from airflow.sdk.lineage import get_hook_lineage_collector

    collector = get_hook_lineage_collector()
    for table in tables:
        uri = f"{postgres_namespace(db)}/{db.database_name}/{APP_SCHEMA}/{table}"
        collector.add_output_asset(context=db, uri=uri)
