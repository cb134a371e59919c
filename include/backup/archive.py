"""Verified backups: parallel dump with a SHA-256 manifest, restore into a scratch database, compare.

A backup counts only once a real restore of it has been checked: the same schema (the schema-only
dumps of the source and of the restore are equal, once the differences that a `--no-owner
--no-privileges` restore cannot reproduce by design are normalised: `SCHEMA_RULES`), the same rows
in every table (count and an order-independent content checksum of each), sequences at least
where they were, and the same materialized views populated. Everything here talks to PostgreSQL
through its own client programs and a libpq DSN, so it runs the same under Airflow, in tests and
from a shell.

What a faithful restore changes in the rows, and how the comparison allows for it (each named
where it is done):
- enum and reg* values get new OIDs, and their hash functions hash the OID: such tables are
  hashed as text (`OID_HASHED_TYPES`, `_plan`);
- a value's text depends on session settings a restore does not carry: pinned (`HASH_SESSION`);
- a child of (non-partition) inheritance may get another column order: hashed in name order
  (`_TABLES`, `_query`);
- rows of a partitioned table may land in other partitions: a partition's difference counts only
  when its tree's totals differ too (`compare`);
- an extension's own tables are made by CREATE EXTENSION, not copied: left out (`_TABLES`);
- materialized views are refreshed, not copied: only whether each is populated (`snapshot`).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from include.backup import BackupError, ChecksumMismatch
from include.backup.pg_programs import (
    PG_ATTVER_LINE,
    RESTRICT_KEY_LINE,
    client_major,
    finish_client,
    libpq_env,
    pg_bin,
    run_client,
    server_version,
    start_client,
    start_schema_dump,
)

MANIFEST = "manifest.json"
SCHEMA_FILE = "schema.sql"
EXPECTED_FILE = "expected.json"
# the tables the audit gate's sample restore proves (include/audit/gates.py: backup_restores_now)
CRITICAL_TABLES = ("execution_tasks", "payments", "offers", "model_versions", "backups")


# --- dump and manifest ----------------------------------------------------------------------


@dataclass
class Dump:
    folder: Path
    manifest: dict[str, str]
    size_bytes: int
    seconds: float
    server_version: str
    checksum_seconds: float = 0.0  # counting and hashing every table, alongside pg_dump


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dump(dsn: str, folder: Path, *, jobs: int = 2, compress: str = "gzip:1") -> Dump:
    """A consistent, parallel directory-format dump, what a restore of it must reproduce
    (`schema.sql`, `expected.json`, taken in the dump's own snapshot), and a SHA-256 manifest.
    `jobs` is both pg_dump's and the content checksums' number of connections."""
    import psycopg2

    if folder.exists():
        raise BackupError(f"dump folder {folder} already exists; refusing to mix two backups")
    start = time.perf_counter()
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute("SELECT pg_export_snapshot()")
            snapshot_id = cur.fetchone()[0]
            version = server_version(cur)
            # Sequences are not transactional: read them before pg_dump does, so that a restore is
            # never behind what is recorded (a writer may move them on in between, never back)
            sequences = sequence_values(cur)
            # both dumps run while this connection (and `jobs - 1` more in the same snapshot)
            # count and hash every table
            data_dump = start_client(
                [
                    pg_bin("pg_dump"),
                    "-Fd",
                    f"-j{jobs}",
                    f"-Z{_compress_option(compress)}",
                    f"--snapshot={snapshot_id}",
                    "--no-password",
                    "-f",
                    str(folder),
                ],
                dsn,
            )
            schema_dump = start_schema_dump(dsn, snapshot_id)
            try:
                hashing = time.perf_counter()
                expected = snapshot(cur, sequences=sequences, dsn=dsn, snapshot_id=snapshot_id, jobs=jobs)
                checksum_seconds = time.perf_counter() - hashing
                schema = finish_client(schema_dump, "pg_dump --schema-only")
            except BaseException:
                data_dump.kill()
                schema_dump.kill()
                raise
            finally:
                finish_client(data_dump, "pg_dump")
    finally:
        conn.close()
    # pg_dump's own text: the comparison normalises both sides alike (SCHEMA_RULES)
    (folder / SCHEMA_FILE).write_text(schema)
    (folder / EXPECTED_FILE).write_text(json.dumps(expected.__dict__, indent=2, sort_keys=True))
    manifest = write_manifest(folder)
    size = sum(p.stat().st_size for p in folder.iterdir())
    return Dump(folder, manifest, size, time.perf_counter() - start, version, checksum_seconds)


def _compress_option(compress: str) -> str:
    """`gzip:N` for pg_dump 16+, `N` for older ones (PG_BIN may name the clients of an older
    server: pg_restore 17+ writes `SET transaction_timeout`, which a server before 17 refuses)."""
    method, _, level = compress.partition(":")
    if method == "gzip" and level and client_major("pg_dump") < 16:
        return level
    return compress


def write_manifest(folder: Path) -> dict[str, str]:
    manifest = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def check_manifest(folder: Path, manifest: dict[str, str]) -> None:
    """Every file present with its recorded SHA-256, and nothing else; else name the file."""
    present = {p.name for p in folder.iterdir() if p.name != MANIFEST}
    if missing := sorted(set(manifest) - present):
        raise ChecksumMismatch(f"backup {folder.name}: files missing: {missing}")
    if extra := sorted(present - set(manifest)):
        raise ChecksumMismatch(f"backup {folder.name}: files not in the manifest: {extra}")
    for name, expected in sorted(manifest.items()):
        actual = sha256_file(folder / name)
        if actual != expected:
            raise ChecksumMismatch(
                f"backup {folder.name}: file {name} has sha256 {actual}, the manifest records {expected}"
            )


# --- restore --------------------------------------------------------------------------------


def restore(
    dsn: str, folder: Path, *, jobs: int = 2, clean: bool = False, tables: tuple[str, ...] = ()
) -> float:
    """Restore a directory-format dump into the database of `dsn` (empty, unless `clean`, which
    drops each object before recreating it); returns seconds. `tables` restores only those
    tables (definition and rows, no indexes or constraints): a sample that proves the data."""
    argv = [
        pg_bin("pg_restore"),
        f"-j{jobs}",
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--no-password",
    ]
    if clean:
        argv += ["--clean", "--if-exists"]
    argv += [f"--table={table}" for table in tables]
    start = time.perf_counter()
    run_client([*argv, "-d", libpq_env(dsn)["PGDATABASE"], str(folder)], dsn, "pg_restore")
    return time.perf_counter() - start


# --- what a restore must reproduce: rows, sequences, materialized views ---------------------


@dataclass
class Snapshot:
    """What a restore must reproduce, each keyed by `schema.name`.

    - `row_counts`, `table_checksums`: every table with rows of its own (partitions included,
      each with its own rows only), and every partitioned table at the top of its tree (the sums
      over its partitions: what a query through it sees);
    - `sequences`: last values (None: never used);
    - `materialized_views`: populated or not (their rows are not compared: see `snapshot`);
    - `partitions`: each partition, at any depth, with the partitioned table at its tree's top;
    - `checksums`: the CRITICAL_TABLES' checksums again under their bare names, for the audit
      gate's sample restore, which restores only those; backups taken before `table_checksums`
      existed have only these.
    """

    row_counts: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int | None] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    table_checksums: dict[str, str] = field(default_factory=dict)
    materialized_views: dict[str, bool] = field(default_factory=dict)
    partitions: dict[str, str] = field(default_factory=dict)


# Every session that hashes rows pins what the text of a value depends on, so that the source
# and the restore hash the same text (a restore does not carry `ALTER DATABASE ... SET`, and a
# session may have settings of its own): time zone and date, interval, float, bytea and money
# output, the search path (a regclass's text is qualified by it); it refuses to hash a subset
# under row-level security rather than skip rows (as pg_dump does); no JIT (its compilation
# costs more than these scans save) and no parallel workers of its own (the sessions are).
HASH_SESSION = (
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL IntervalStyle = 'postgres'",
    "SET LOCAL extra_float_digits = 1",
    "SET LOCAL bytea_output = 'hex'",
    "SET LOCAL lc_monetary = 'C'",
    "SET LOCAL search_path = pg_catalog",
    "SET LOCAL row_security = off",
    "SET LOCAL jit = off",
    "SET LOCAL max_parallel_workers_per_gather = 0",
)
# A table this large is hashed in parts (block ranges, read by TID range scans) spread over the
# sessions, so that one large table does not leave the other sessions idle.
CHUNK_BLOCKS = 8192  # 64 MB of 8 kB pages
# Types hashed by an OID the restore assigns anew, not by their value: an enum's label, and the
# reg* types' objects. Their text is what pg_dump writes and the restore reads back.
OID_HASHED_TYPES = frozenset(
    {
        "regclass",
        "regcollation",
        "regconfig",
        "regdictionary",
        "regnamespace",
        "regoper",
        "regoperator",
        "regproc",
        "regprocedure",
        "regrole",
        "regtype",
    }
)

_TABLES = """
SELECT c.oid, n.nspname || '.' || c.relname, c.relkind = 'p',
       pg_relation_size(c.oid) / current_setting('block_size')::int,
       -- a partition's tree: the partitioned table at its top
       CASE WHEN c.relispartition THEN (
           SELECT rn.nspname || '.' || r.relname FROM pg_class r
           JOIN pg_namespace rn ON rn.oid = r.relnamespace WHERE r.oid = pg_partition_root(c.oid)
       ) END,
       -- a child of (non-partition) inheritance: pg_dump recreates it with the inherited
       -- columns first, so its column order may differ in the restore
       NOT c.relispartition AND EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
   AND n.nspname <> ALL (ARRAY['pg_catalog', 'information_schema']) AND n.nspname !~ '^pg_toast'
   -- an extension's own table, unless it is one of its configuration tables: pg_dump leaves its
   -- rows out, and the restore's CREATE EXTENSION makes them anew
   AND NOT EXISTS (
       SELECT 1 FROM pg_depend d
        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
          AND NOT EXISTS (SELECT 1 FROM pg_extension e WHERE c.oid = ANY (e.extconfig)))
 ORDER BY 2
"""


@dataclass
class _Table:
    oid: int
    key: str  # schema.name
    partitioned: bool
    blocks: int
    root: str | None  # a partition's tree's top
    by_name: bool  # columns in name order (an inheritance child's order may change)
    ident: object = None  # psycopg2.sql.Identifier
    columns: list[str] = field(default_factory=list)
    text: bool = False  # hashed as text: some column's type has no value hash


def sequence_values(cur) -> dict[str, int | None]:
    cur.execute("SELECT schemaname || '.' || sequencename, last_value FROM pg_sequences ORDER BY 1")
    return dict(cur.fetchall())


def snapshot(
    cur,
    critical: tuple[str, ...] = CRITICAL_TABLES,
    sequences: dict[str, int | None] | None = None,
    *,
    dsn: str | None = None,
    snapshot_id: str | None = None,
    jobs: int = 1,
) -> Snapshot:
    """Count and hash every table, read the sequences (now unless given) and whether each
    materialized view is populated.

    Each row is hashed with its columns' own hash functions (`hash_record_extended`, 2-3x
    cheaper than hashing its text), the hashes summed: order-independent, one pass, no sort.
    A table with a column whose type has no such function, or whose hash is of an OID rather
    than of the value (enums, reg* types, and, to be safe, composites and ranges, which may hold
    them), has its rows' text hashed instead (`text:` before the sum). With `jobs` > 1, `dsn`
    opens `jobs - 1` more sessions, each in `snapshot_id` when given, and the tables (the
    large ones in parts) are shared out, largest first.

    Materialized views' rows are not compared: pg_dump does not copy them, the restore runs
    their query again (REFRESH) over the restored tables, which are compared; a view last
    refreshed before later writes to its tables is restored fresher than its source, and
    comparing its rows would fail a faithful restore.
    """
    snap = Snapshot(sequences=sequence_values(cur) if sequences is None else sequences)
    _session(cur)
    cur.execute(_TABLES)
    tables = [_Table(*row) for row in cur.fetchall()]
    _plan(cur, tables)
    results = _hash_all(cur, tables, dsn=dsn, snapshot_id=snapshot_id, jobs=jobs)
    trees: dict[str, list] = {}  # a partition tree's top: [rows, sum, as text]
    for t in tables:
        if t.root:
            snap.partitions[t.key] = t.root
        if t.partitioned:
            continue
        count, total = results.get(t.key, (0, 0))
        snap.row_counts[t.key], snap.table_checksums[t.key] = count, _checksum(total, t.text)
        if t.root:
            tree = trees.setdefault(t.root, [0, 0, t.text])
            tree[0] += count
            tree[1] += total
    for t in tables:
        if t.partitioned and not t.root:  # the top of a partition tree: the sums over its partitions
            count, total, text = trees.get(t.key, (0, 0, t.text))
            snap.row_counts[t.key], snap.table_checksums[t.key] = count, _checksum(total, text)
    for table in critical:
        if (key := f"public.{table}") in snap.table_checksums:
            snap.checksums[table] = snap.table_checksums[key]
    cur.execute("SELECT schemaname || '.' || matviewname, ispopulated FROM pg_matviews ORDER BY 1")
    snap.materialized_views = dict(cur.fetchall())
    return snap


def _checksum(total: int, text: bool) -> str:
    return f"text:{total}" if text else str(total)


def _session(cur) -> None:
    for statement in HASH_SESSION:
        cur.execute(statement)


def _plan(cur, tables: list[_Table]) -> None:
    """Each table's columns and how its rows are hashed: by value, or as text."""
    from psycopg2 import errors, sql

    if not tables:
        return
    cur.execute(
        "SELECT oid, typtype, typbasetype, typelem, typlen, typname, "
        "typnamespace = 'pg_catalog'::regnamespace, format_type(oid, NULL) FROM pg_type"
    )
    types = {row[0]: row[1:] for row in cur.fetchall()}
    cur.execute(
        "SELECT attrelid, attname, atttypid FROM pg_attribute "
        "WHERE attrelid = ANY (%s) AND attnum > 0 AND NOT attisdropped ORDER BY attrelid, attnum",
        ([t.oid for t in tables],),
    )
    columns: dict[int, list[tuple[str, int]]] = {}
    for relid, name, type_oid in cur.fetchall():
        columns.setdefault(relid, []).append((name, type_oid))
    probed: dict[int, bool] = {}

    def base(oid: int) -> int:
        while types[oid][0] == "d":  # a domain: its base type's hash and text
            oid = types[oid][1]
        return oid

    def by_value(oid: int) -> bool:  # its hash depends on its value alone
        typtype, _, elem, length, name, catalog, _ = types[oid]
        if typtype == "b" and elem and length == -1:  # an array: its elements decide
            return by_value(base(elem))
        return typtype == "b" and not (catalog and name in OID_HASHED_TYPES)

    def hashable(oid: int) -> bool:  # hash_record_extended finds an extended hash function
        if oid not in probed:
            cur.execute("SAVEPOINT probe")
            try:
                cur.execute(
                    sql.SQL("SELECT hash_record_extended(ROW(NULL::{}), 0)").format(sql.SQL(types[oid][6]))
                )
                probed[oid] = True
            except (errors.UndefinedFunction, errors.FeatureNotSupported):
                probed[oid] = False
            cur.execute("ROLLBACK TO SAVEPOINT probe")
            cur.execute("RELEASE SAVEPOINT probe")
        return probed[oid]

    for t in tables:
        schema, _, name = t.key.partition(".")
        t.ident = sql.Identifier(schema, name)
        cols = columns.get(t.oid, [])
        t.columns = sorted(c for c, _ in cols) if t.by_name else [c for c, _ in cols]
        t.text = not all(by_value(base(type_oid)) and hashable(base(type_oid)) for _, type_oid in cols)


def _query(t: _Table, first_block: int | None, end_block: int | None):
    """Count and hash-sum the rows of `t` itself (ONLY: a parent's rows are its own, a child's
    its own), within a block range when given."""
    from psycopg2 import sql

    if t.by_name:
        row = sql.SQL("ROW({})").format(
            sql.SQL(", ").join(sql.SQL("t.") + sql.Identifier(c) for c in t.columns)
        )
    else:
        row = sql.SQL("t")
    hashed = (
        sql.SQL("hashtextextended(({})::text, 0)") if t.text else sql.SQL("hash_record_extended({}, 0)")
    ).format(row)
    where = sql.SQL("")
    if first_block is not None:
        where = sql.SQL(" WHERE t.ctid >= {}::tid").format(sql.Literal(f"({first_block},0)"))
        if end_block is not None:
            where += sql.SQL(" AND t.ctid < {}::tid").format(sql.Literal(f"({end_block},0)"))
    return sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM ONLY {} t{}").format(
        hashed, t.ident, where
    )


def _hash_all(
    cur, tables: list[_Table], *, dsn: str | None, snapshot_id: str | None, jobs: int
) -> dict[str, tuple[int, int]]:
    """(rows, sum of row hashes) of every table with rows of its own, over `jobs` sessions."""
    import psycopg2

    parallel = jobs > 1 and dsn is not None
    work = []  # (blocks, table, first block, end block)
    for t in tables:
        if t.partitioned:
            continue
        if parallel and t.blocks > CHUNK_BLOCKS:
            for first in range(0, t.blocks, CHUNK_BLOCKS):
                end = first + CHUNK_BLOCKS if first + CHUNK_BLOCKS < t.blocks else None  # the last: open
                work.append((min(CHUNK_BLOCKS, t.blocks - first), t, first, end))
        else:
            work.append((t.blocks, t, None, None))
    work.sort(key=lambda w: -w[0])  # largest first, so that the sessions end together
    results: dict[str, tuple[int, int]] = {}
    lock = threading.Lock()
    failures: list[BaseException] = []

    def run(worker_cur) -> None:
        while not failures:
            with lock:
                if not work:
                    return
                _, t, first, end = work.pop(0)
            worker_cur.execute(_query(t, first, end))
            count, total = worker_cur.fetchone()
            with lock:
                before = results.get(t.key, (0, 0))
                results[t.key] = (before[0] + count, before[1] + int(total))

    if not parallel:
        run(cur)
        return results
    extra = []
    try:
        for _ in range(min(jobs, len(work)) - 1):
            conn = psycopg2.connect(dsn)
            extra.append(conn)
            worker_cur = conn.cursor()
            worker_cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if snapshot_id:
                worker_cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_id,))
            _session(worker_cur)

        def guarded(worker_cur) -> None:
            try:
                run(worker_cur)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=guarded, args=(c.cursor(),)) for c in extra]
        for thread in threads:
            thread.start()
        guarded(cur)
        for thread in threads:
            thread.join()
    finally:
        for conn in extra:
            conn.close()
    if failures:
        raise failures[0]
    return results


# --- the schema: pg_dump's text, normalised ------------------------------------------------


@dataclass(frozen=True)
class SchemaRule:
    """A difference between the schema-only dumps of a source and of its faithful restore that
    the restore cannot avoid: `apply` removes it from either text."""

    name: str
    reason: str
    apply: Callable[[str], str]


def _drop(pattern: str) -> Callable[[str], str]:
    compiled = re.compile(pattern, re.MULTILINE)
    return lambda text: compiled.sub("", text)


SCHEMA_RULES = (
    SchemaRule(
        "restrict key",
        "pg_dump 18 (and the 13.22/14.19/15.14/16.10/17.6 releases) fences its script with "
        "`\\restrict KEY` / `\\unrestrict KEY`, a new random KEY on every run",
        _drop(RESTRICT_KEY_LINE + r"\n"),
    ),
    SchemaRule(
        "pg_attver",
        "some patched servers (seen: a CI machine's PostgreSQL 15) give every column they create a "
        "`pg_attver` option, so a column the restore creates anew never has the source's",
        _drop(PG_ATTVER_LINE + r"\n"),
    ),
    SchemaRule(
        "dump versions",
        "the header names the server's and pg_dump's versions; a minor update between the backup "
        "and its check changes them, not the schema",
        _drop(r"^-- Dumped (?:from database|by pg_dump) version .*\n"),
    ),
    SchemaRule(
        "public schema owner",
        "pg_dump writes an entry (no statement, only `*not* creating schema`) for a `public` schema "
        "owned by another role than pg_database_owner: every database created before PostgreSQL 15, "
        "or after ALTER SCHEMA public OWNER TO; a --no-owner restore leaves the new database's "
        "`public` as CREATE DATABASE made it, which pg_dump does not write",
        _drop(
            r"^--\n-- Name: public; Type: SCHEMA; Schema: -; Owner: [^\n]*\n--\n\n"
            r"-- \*not\* creating schema, since initdb creates it\n\n\n"
        ),
    ),
)


def normalise_schema(text: str) -> str:
    for rule in SCHEMA_RULES:
        text = rule.apply(text)
    return text


# a TOC entry's header in pg_dump's plain text
_ENTRY = re.compile(
    r"^--\n-- (?:Data for )?Name: (?P<name>.*); Type: (?P<type>.*); Schema: (?P<schema>.*); Owner: .*\n--\n",
    re.MULTILINE,
)


def _schema_entries(text: str) -> dict[str, str]:
    """Each TOC entry's text by `TYPE schema.name` (the part before the first: `header`)."""
    entries: dict[str, str] = {}
    key, begin = "header", 0
    for m in _ENTRY.finditer(text):
        entries[key] = entries.get(key, "") + text[begin : m.start()]
        schema = "" if m["schema"] == "-" else f"{m['schema']}."
        key, begin = f"{m['type']} {schema}{m['name']}", m.end()
    entries[key] = entries.get(key, "") + text[begin:]
    return entries


def schema_differences(source: str, restored: str, limit: int = 20) -> list[str]:
    """How two schema-only dumps differ after `SCHEMA_RULES`, each naming the object and both
    texts (the first line that differs); [] if they are equal."""
    source, restored = normalise_schema(source), normalise_schema(restored)
    if source == restored:
        return []
    want, got = _schema_entries(source), _schema_entries(restored)
    problems = []
    for key in sorted(set(want) | set(got)):
        w, g = want.get(key), got.get(key)
        if w == g:
            continue
        if g is None:
            problems.append(f"schema: {key} is in the backup, not in the restore ({_first_statement(w)})")
        elif w is None:
            problems.append(f"schema: {key} is in the restore, not in the backup ({_first_statement(g)})")
        else:
            wl, gl = w.strip().splitlines(), g.strip().splitlines()
            i = next(
                (i for i, (a, b) in enumerate(zip(wl, gl, strict=False)) if a != b), min(len(wl), len(gl))
            )
            problems.append(f"schema: {key}: backup has {_line(wl, i)!r}, restore has {_line(gl, i)!r}")
    if len(problems) > limit:
        problems[limit:] = [f"schema: and {len(problems) - limit} more differences"]
    return problems


def _first_statement(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line and not line.startswith("--")]
    return (lines[0] if lines else "").strip()[:200]


def _line(lines: list[str], i: int) -> str:
    return lines[i].strip()[:200] if i < len(lines) else "(nothing)"


# --- comparison -----------------------------------------------------------------------------

SCHEMA_DIFFER = "schema-only dumps of the source and the restore differ"


def compare(
    restored_dsn: str, folder: Path, *, jobs: int = 2, timings: dict[str, float] | None = None
) -> list[str]:
    """How the restore differs from what the dump recorded, each naming the object and both
    values; [] if none. `jobs` sessions hash the restored tables; `timings`, when given, gets
    the seconds spent in `snapshot` (counting and hashing) and in the whole comparison.

    Sequences are not transactional: the dump records them before pg_dump reads them, so a
    restored value may be higher than recorded under concurrent writes, never lower.
    Rows of a partitioned table may land in other partitions than in the source (pg_dump loads
    a table hash-partitioned on an enum through its root, and an enum's hash is of its OID): a
    partition's difference is not reported when its tree's totals agree.
    """
    import psycopg2

    start = time.perf_counter()
    raw = json.loads((folder / EXPECTED_FILE).read_text())
    expected = Snapshot(**raw)
    schema_dump = start_schema_dump(restored_dsn)  # runs while the tables are hashed
    try:
        conn = psycopg2.connect(restored_dsn)
        try:
            with conn.cursor() as cur:
                hashing = time.perf_counter()
                actual = snapshot(cur, dsn=restored_dsn, jobs=jobs)
                snapshot_seconds = time.perf_counter() - hashing
        finally:
            conn.close()
        restored_schema = finish_client(schema_dump, "pg_dump --schema-only")
    except BaseException:
        schema_dump.kill()
        raise
    problems = []
    if details := schema_differences((folder / SCHEMA_FILE).read_text(), restored_schema):
        problems += [SCHEMA_DIFFER, *details]
    if "table_checksums" in raw:
        problems += _table_differences(expected, actual)
    else:  # a backup from before every table was hashed: counts, and the critical tables' checksums
        problems += _legacy_differences(expected, actual)
    for key, w in sorted(expected.sequences.items()):  # one the backup lacks: the schema says so
        g = actual.sequences.get(key)
        if w is not None and (g is None or g < w):
            problems.append(f"sequence {key}: backup recorded {w}, restore has {_value(g)}")
    for key, w in sorted(expected.materialized_views.items()):  # one the backup lacks: the schema says so
        g = actual.materialized_views.get(key)
        if g != w:
            problems.append(
                f"materialized view {key}: backup recorded {_populated(w)}, restore has {_populated(g)}"
            )
    if timings is not None:
        timings.update(snapshot_seconds=snapshot_seconds, seconds=time.perf_counter() - start)
    return problems


def _value(value) -> str:
    return "none" if value is None else str(value)


def _populated(flag: bool | None) -> str:
    return "none" if flag is None else "populated" if flag else "not populated"


def _table_differences(expected: Snapshot, actual: Snapshot) -> list[str]:
    def state(snap: Snapshot, key: str) -> tuple[int | None, str | None]:
        return snap.row_counts.get(key), snap.table_checksums.get(key)

    problems = []
    tops = set(expected.partitions.values()) | set(actual.partitions.values())
    for key in sorted(set(expected.row_counts) | set(actual.row_counts)):
        want, got = state(expected, key), state(actual, key)
        if want == got:
            continue
        root = actual.partitions.get(key) or expected.partitions.get(key)
        if root and state(expected, root) == state(actual, root) and state(actual, root)[0] is not None:
            continue  # rows that moved between partitions of one tree
        if key in tops and want[0] is not None and got[0] is not None:
            continue  # a tree's totals: its partitions that differ are reported
        problems.append(
            f"table {key}: backup recorded {_value(want[0])} rows (checksum {_value(want[1])}), "
            f"restore has {_value(got[0])} ({_value(got[1])})"
        )
    return problems


def _legacy_differences(expected: Snapshot, actual: Snapshot) -> list[str]:
    counted = Snapshot(row_counts=actual.row_counts, partitions=actual.partitions)
    problems = _table_differences(expected, counted)
    for table in sorted(expected.checksums):
        w, g = expected.checksums[table], actual.checksums.get(table)
        if w != g:
            problems.append(f"table public.{table}: backup recorded checksum {w}, restore has {_value(g)}")
    return problems
