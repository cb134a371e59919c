"""What tasks read and write, for OpenLineage, named by its dataset naming: the app database as
``postgres://host:port`` + ``database`` (or ``database.public.table``), S3 as ``s3://bucket`` + the
key prefix or object key, Stripe as ``stripe://api-host`` + the object kind (``coupons``,
``charges``...), the AI executor as its base URL + ``tasks``. Imported when a task runs or the
OpenLineage listener asks, never at parse time.

Operators say what they read and wrote through ``get_openlineage_facets_on_*`` (backups, the
drain); ``@task`` steps and hooks report through Airflow's hook lineage collector (migrations,
every S3 object the offer steps read or write, every Stripe object kind the hook touches), which
costs nothing when OpenLineage is off. ``stripe://`` is this provider's asset scheme
(``get_provider_info``'s ``asset-uris``: :func:`sanitize_stripe_uri`,
:func:`stripe_to_openlineage`); the other schemes are the postgres and amazon providers'."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from urllib.parse import SplitResult

    from airflow.sdk import Asset
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


def app_table(db: AppDatabaseHook, table: str) -> Dataset:
    """One table of the app database."""
    from openlineage.client.event_v2 import Dataset

    return Dataset(namespace=postgres_namespace(db), name=f"{db.database_name}.{APP_SCHEMA}.{table}")


def executor_tasks(base_url: str) -> Dataset:
    """The AI executor's task endpoint: what a drain sends execution tasks to."""
    from openlineage.client.event_v2 import Dataset

    url = urlsplit(base_url)
    return Dataset(namespace=f"{url.scheme}://{url.netloc}", name=f"{url.path.strip('/')}/tasks".lstrip("/"))


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


def report_s3_objects(client: Any, context: Any) -> Any:
    """`client` (boto3's S3 client), reporting every object it reads (GetObject) as an input
    and writes (PutObject) as an output of the running task; `context` is the hook that made it."""
    from airflow.sdk.lineage import get_hook_lineage_collector

    def report(params: dict[str, Any], model: Any, **_: Any) -> None:
        collector = get_hook_lineage_collector()
        add = collector.add_output_asset if model.name == "PutObject" else collector.add_input_asset
        add(context=context, uri=f"s3://{params['Bucket']}/{params['Key']}")

    for operation in ("PutObject", "GetObject"):
        client.meta.events.register(f"before-parameter-build.s3.{operation}", report)
    return client


def stripe_uri(api_base: str, kind: str) -> str:
    """The asset URI of Stripe's `kind` objects ("coupons", "charges") at `api_base`."""
    return f"stripe://{urlsplit(api_base).netloc or api_base}/{kind}"


def report_stripe(hook: Any, api_base: str, kind: str, *, wrote: bool) -> None:
    """The running task read (or wrote) Stripe's `kind` objects."""
    from airflow.sdk.lineage import get_hook_lineage_collector

    collector = get_hook_lineage_collector()
    add = collector.add_output_asset if wrote else collector.add_input_asset
    add(context=hook, uri=stripe_uri(api_base, kind))


def sanitize_stripe_uri(uri: SplitResult) -> SplitResult:
    """``stripe://host/kind``: a host and one path segment, the object kind."""
    if not uri.netloc or uri.path.count("/") != 1 or uri.path == "/":
        raise ValueError(f"a stripe:// asset URI is stripe://<api host>/<object kind>, not {uri.geturl()!r}")
    return uri


def stripe_to_openlineage(asset: Asset, lineage_context: Any) -> Dataset:
    """``stripe://host/kind`` as the dataset ``kind`` in the namespace ``stripe://host``."""
    from openlineage.client.event_v2 import Dataset

    url = urlsplit(asset.uri)
    return Dataset(namespace=f"stripe://{url.netloc}", name=url.path.lstrip("/"))
