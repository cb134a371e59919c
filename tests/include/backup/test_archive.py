"""include.backup.archive on a real PostgreSQL: a database the project did not create (extensions,
domains, enums, partitions, a `public` schema owned by another role, ...) restores and compares
clean, and the comparison still catches a changed row anywhere and a changed schema.

Runs on the local stack's PostgreSQL, or on TEST_PG_SERVER's (`make test-pg15`); a server older
than 17 is dumped and restored with its own client programs (PG_BIN), since pg_restore 17+ writes
`SET transaction_timeout`, which such a server refuses.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import psycopg2
import pytest

# Run as the superuser in the source database; {owner} is a role of the test's own. Every object
# is owned by that role, not by the role that dumps it (`app`, granted reads), and `public` too.
WRITTEN_ELSEWHERE = """
ALTER SCHEMA public OWNER TO {owner};
COMMENT ON SCHEMA public IS 'owned by {owner}';
CREATE SCHEMA ext;
GRANT USAGE ON SCHEMA ext TO {owner};
CREATE EXTENSION citext WITH SCHEMA ext;
CREATE EXTENSION hstore;
CREATE SCHEMA sales AUTHORIZATION {owner};
SET ROLE {owner};
CREATE TYPE sales.mood AS ENUM ('calm', 'busy', 'angry');
CREATE DOMAIN sales.positive AS numeric(12, 2) CHECK (VALUE > 0);
CREATE TYPE sales.pair AS (a int, m sales.mood);
-- partitioned by range, one partition itself hash-partitioned, a default one; a dropped column
CREATE TABLE sales.orders (
    id bigint GENERATED ALWAYS AS IDENTITY,
    placed date NOT NULL,
    amount sales.positive NOT NULL,
    mood sales.mood,
    moods sales.mood[],
    email ext.citext,
    attrs hstore,
    doc json,
    spot point,
    span int4range,
    kind regclass,
    pair sales.pair,
    gone int,
    PRIMARY KEY (id, placed)
) PARTITION BY RANGE (placed);
CREATE TABLE sales.orders_2025 PARTITION OF sales.orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE sales.orders_2026 PARTITION OF sales.orders FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')
    PARTITION BY HASH (id);
CREATE TABLE sales.orders_2026_h0 PARTITION OF sales.orders_2026 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE sales.orders_2026_h1 PARTITION OF sales.orders_2026 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE sales.orders_rest PARTITION OF sales.orders DEFAULT;
ALTER TABLE sales.orders DROP COLUMN gone;
CREATE INDEX orders_email_idx ON sales.orders (email);
-- hash-partitioned on an enum: pg_dump loads it through its root, the restore's enum has new
-- OIDs, so its rows may land in the other partition
CREATE TABLE sales.moods (m sales.mood, n int) PARTITION BY HASH (m);
CREATE TABLE sales.moods_0 PARTITION OF sales.moods FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE sales.moods_1 PARTITION OF sales.moods FOR VALUES WITH (MODULUS 2, REMAINDER 1);
-- a serial (a sequence owned by its column), a trigger, a free-standing sequence
CREATE TABLE public.notes (id serial PRIMARY KEY, body text, at timestamptz DEFAULT now(), dropped int);
ALTER TABLE public.notes DROP COLUMN dropped;
CREATE INDEX notes_at_idx ON public.notes (at);
CREATE SEQUENCE public.tickets START 100;
CREATE FUNCTION public.shout() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.body := coalesce(NEW.body, '') || '!'; RETURN NEW; END $$;
CREATE TRIGGER notes_shout BEFORE INSERT ON public.notes FOR EACH ROW EXECUTE FUNCTION public.shout();
-- inheritance, a column added to the parent later: pg_dump recreates the child in another order
CREATE TABLE public.parent (id int, v text);
CREATE TABLE public.child (extra int) INHERITS (public.parent);
ALTER TABLE public.parent ADD COLUMN late int;
CREATE VIEW sales.busy AS SELECT id, placed FROM sales.orders WHERE mood = 'busy';
CREATE MATERIALIZED VIEW sales.per_mood AS SELECT mood, count(*) AS n FROM sales.orders GROUP BY mood;
CREATE MATERIALIZED VIEW sales.later AS SELECT 1 AS one WITH NO DATA;
INSERT INTO sales.orders (placed, amount, mood, moods, email, attrs, doc, spot, span, kind, pair)
SELECT date '2025-06-01' + (i % 700), i + 0.5, (ARRAY['calm', 'busy', 'angry'])[1 + i % 3]::sales.mood,
       ARRAY['calm', 'busy']::sales.mood[], 'User' || i || '@Example.org', hstore('k', i::text),
       json_build_object('i', i), point(i, -i), int4range(i, i + 10), 'sales.orders'::regclass,
       ROW(i, 'calm')::sales.pair
  FROM generate_series(1, 2000) i;
INSERT INTO sales.moods
SELECT (ARRAY['calm', 'busy', 'angry'])[1 + i % 3]::sales.mood, i FROM generate_series(1, 300) i;
INSERT INTO public.notes (body) SELECT 'note ' || i FROM generate_series(1, 50) i;
INSERT INTO public.parent VALUES (1, 'p', 1);
INSERT INTO public.child (id, v, extra, late) VALUES (2, 'c', 3, 4);
SELECT nextval('public.tickets');
REFRESH MATERIALIZED VIEW sales.per_mood;
RESET ROLE;
GRANT USAGE ON SCHEMA sales, ext TO app;
GRANT SELECT ON ALL TABLES IN SCHEMA sales, public TO app;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA sales, public TO app;
"""


def execute(dsn: str, statement: str, params=None, *, autocommit: bool = False) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = autocommit
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


@pytest.fixture(scope="module")
def client_programs(pg_server):
    """PG_BIN with client programs that can restore into this server."""
    major = int(execute(pg_server.superuser_dsn(), "SHOW server_version_num")[0][0]) // 10000
    saved = os.environ.get("PG_BIN")
    if major < 17 and not saved:
        folder = Path(f"/usr/lib/postgresql/{major}/bin")
        if not (folder / "pg_restore").exists():
            pytest.skip(f"PostgreSQL {major}: pg_restore 17+ cannot restore into it, and {folder} has none")
        os.environ["PG_BIN"] = str(folder)
    yield
    if saved is None:
        os.environ.pop("PG_BIN", None)


@pytest.fixture(scope="module")
def written_elsewhere(pg_server, client_programs, tmp_path_factory):
    """A database with every feature above, dumped by `archive.dump` as `app`."""
    from include.backup.archive import dump

    tag = uuid.uuid4().hex[:8]
    name, owner = f"elsewhere_{tag}", f"backup_owner_{tag}"
    admin = pg_server.superuser_dsn()
    execute(admin, f"CREATE ROLE {owner} NOLOGIN", autocommit=True)
    execute(admin, f"CREATE DATABASE {name} OWNER app", autocommit=True)
    try:
        execute(pg_server.superuser_dsn(name), WRITTEN_ELSEWHERE.format(owner=owner))
        folder = tmp_path_factory.mktemp("backup") / "dump"
        dump(pg_server.app_dsn(name), folder)
        yield {"dsn": pg_server.app_dsn(name), "folder": folder}
    finally:
        execute(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", autocommit=True)
        execute(admin, f"DROP ROLE {owner}", autocommit=True)


@pytest.fixture
def restore_of(pg_server):
    """restore_of(folder): a new database (made by `app`, as the verification's scratch database
    is) with the backup restored into it; its DSN. Dropped after the test."""
    from include.backup.archive import restore
    from include.backup.pg_programs import create_database

    made = []

    def restore_into(folder: Path) -> str:
        name = f"restored_{uuid.uuid4().hex[:8]}"
        create_database(pg_server.app_dsn("postgres"), name)
        made.append(name)
        restore(pg_server.app_dsn(name), folder)
        return pg_server.app_dsn(name)

    yield restore_into
    for name in made:
        execute(pg_server.superuser_dsn(), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", autocommit=True)


def test_a_database_written_elsewhere_restores_and_compares_clean(written_elsewhere, restore_of):
    from include.backup.archive import compare

    restored = restore_of(written_elsewhere["folder"])
    assert compare(restored, written_elsewhere["folder"]) == []
    # every table was hashed, each partition with its own rows, the tree's top with their sums
    expected = json.loads((written_elsewhere["folder"] / "expected.json").read_text())
    checksums, counts = expected["table_checksums"], expected["row_counts"]
    assert {
        "public.notes",
        "public.child",
        "sales.orders_2025",
        "sales.orders_2026_h1",
        "sales.moods_0",
    } <= set(checksums)
    leaves = [k for k in counts if k.startswith("sales.orders_")]
    assert (
        "sales.orders_2026" not in counts and counts["sales.orders"] == sum(counts[k] for k in leaves) == 2000
    )
    assert counts["public.parent"] == 1 and counts["public.child"] == 1, "each table's own rows only"
    assert checksums["sales.orders_2025"].startswith("text:"), "an enum column: hashed as text"
    assert not checksums["public.notes"].startswith("text:"), "hashed by value"
    assert expected["materialized_views"] == {"sales.later": False, "sales.per_mood": True}


def test_one_changed_row_in_a_partition_is_caught_naming_it(written_elsewhere, restore_of):
    from include.backup.archive import compare

    restored = restore_of(written_elsewhere["folder"])
    [(row_id, leaf)] = execute(
        restored,
        "SELECT id, tableoid::regclass::text FROM sales.orders WHERE placed >= '2026-01-01' "
        "ORDER BY id LIMIT 1",
    )
    execute(restored, "UPDATE sales.orders SET amount = amount + 1 WHERE id = %s", (row_id,))
    [problem] = compare(restored, written_elsewhere["folder"])
    assert leaf.startswith("sales.orders_2026_h")
    assert re.fullmatch(rf"table {leaf}: backup recorded (\d+) rows \(checksum text:-?\d+\), restore has \1 "
                        r"\(text:-?\d+\)", problem), problem  # fmt: skip


def test_a_value_changed_outside_the_critical_tables_is_caught(
    app_dsn, client_programs, restore_of, tmp_path
):
    """The project's own database: a value changed in `users`, which is not a critical table,
    and in a table outside `public`; both used to be compared by row count only."""
    from devstack.demo_data import seed
    from include.backup.archive import CRITICAL_TABLES, compare, dump

    seed(app_dsn, scale=0.01)
    execute(app_dsn, "CREATE SCHEMA side; CREATE TABLE side.kv (k text PRIMARY KEY, v jsonb); "
            "INSERT INTO side.kv VALUES ('a', '{\"n\": 1}'), ('b', '{\"n\": 2}')")  # fmt: skip
    assert "users" not in CRITICAL_TABLES
    folder = tmp_path / "dump"
    dump(app_dsn, folder)
    restored = restore_of(folder)
    assert compare(restored, folder) == []
    execute(restored, "UPDATE users SET country = 'ZZ' WHERE id = (SELECT min(id) FROM users)")
    execute(restored, "UPDATE side.kv SET v = '{\"n\": 3}' WHERE k = 'b'")
    problems = compare(restored, folder)
    [users] = execute(restored, "SELECT count(*) FROM users")
    assert [p.split(":")[0] for p in problems] == ["table public.users", "table side.kv"], problems
    assert problems[0].startswith(f"table public.users: backup recorded {users[0]} rows (checksum ")


def test_normalising_does_not_hide_a_real_schema_difference(written_elsewhere, restore_of):
    from include.backup.archive import compare

    restored = restore_of(written_elsewhere["folder"])
    execute(restored, "DROP INDEX public.notes_at_idx")
    execute(restored, "ALTER TABLE public.notes ALTER COLUMN body TYPE varchar(200)")
    execute(restored, "COMMENT ON SCHEMA public IS 'changed'")
    execute(restored, "ALTER SCHEMA public OWNER TO app")  # what no rule may excuse: the comment
    execute(restored, "REFRESH MATERIALIZED VIEW sales.later")
    problems = compare(restored, written_elsewhere["folder"])
    assert problems[0] == "schema-only dumps of the source and the restore differ"
    assert (
        "schema: INDEX public.notes_at_idx is in the backup, not in the restore "
        "(CREATE INDEX notes_at_idx ON public.notes USING btree (at);)"
    ) in problems
    retyped = (
        "schema: TABLE public.notes: backup has 'body text,', restore has 'body character varying(200),'"
    )
    assert retyped in problems
    assert any(
        p.startswith("schema: COMMENT SCHEMA public: backup has") and "'changed'" in p for p in problems
    )
    assert (
        problems[-1] == "materialized view sales.later: backup recorded not populated, restore has populated"
    )
    assert len(problems) == 5, problems  # and no table: the rows are the same


def test_hashing_in_parts_over_several_sessions_gives_the_same_checksums(written_elsewhere, monkeypatch):
    """Large tables are hashed in block ranges spread over sessions; here every table is large."""
    import include.backup.archive as archive

    def taken(**kwargs) -> archive.Snapshot:
        conn = psycopg2.connect(written_elsewhere["dsn"])
        try:
            with conn.cursor() as cur:
                return archive.snapshot(cur, **kwargs)
        finally:
            conn.close()

    whole = taken()
    monkeypatch.setattr(archive, "CHUNK_BLOCKS", 1)
    parts = taken(dsn=written_elsewhere["dsn"], jobs=3)
    assert execute(written_elsewhere["dsn"], "SELECT pg_relation_size('sales.orders_2025') > 8192")[0][0]
    assert parts == whole and whole.table_checksums["sales.orders_2025"] != "text:0"


def test_a_backup_recorded_before_every_table_was_hashed_still_verifies(
    written_elsewhere, restore_of, tmp_path
):
    """expected.json without table_checksums: counts and the critical tables' checksums."""
    import shutil

    from include.backup.archive import compare

    folder = tmp_path / "old"
    shutil.copytree(written_elsewhere["folder"], folder)
    expected = json.loads((folder / "expected.json").read_text())
    old = {k: expected[k] for k in ("row_counts", "sequences", "checksums")}
    (folder / "expected.json").write_text(json.dumps(old))
    restored = restore_of(folder)
    assert compare(restored, folder) == []
    execute(restored, "DELETE FROM public.notes WHERE id = 1")
    assert compare(restored, folder) == [
        "table public.notes: backup recorded 50 rows (checksum none), restore has 49 (none)"
    ]


def test_each_schema_rule_removes_only_what_it_names():
    from include.backup.archive import SCHEMA_RULES, normalise_schema

    public_entry = (
        "--\n-- Name: public; Type: SCHEMA; Schema: -; Owner: -\n--\n\n"
        "-- *not* creating schema, since initdb creates it\n\n\n"
    )
    volatile = (
        "--\n-- PostgreSQL database dump\n--\n\n\\restrict AbC123\n\n"
        "-- Dumped from database version 18.6\n-- Dumped by pg_dump version 18.6\n\n" + public_entry
    )
    kept = (
        "--\n-- Name: t; Type: TABLE; Schema: public; Owner: -\n--\n\n"
        "CREATE TABLE public.t (\n    i integer\n);\n\n\n"
        "ALTER TABLE ONLY public.t ALTER COLUMN i SET (pg_attver=7);\n"
        "--\n-- Name: SCHEMA public; Type: COMMENT; Schema: -; Owner: -\n--\n\n"
        "COMMENT ON SCHEMA public IS 'x';\n\n\n\\unrestrict AbC123\n"
    )
    normalised = normalise_schema(volatile + kept)
    assert normalised == "--\n-- PostgreSQL database dump\n--\n\n\n\n" + kept.replace(
        "ALTER TABLE ONLY public.t ALTER COLUMN i SET (pg_attver=7);\n", ""
    ).replace("\\unrestrict AbC123\n", "")
    # an entry for `public` that does more than note it is not created stays
    created = public_entry.replace(
        "-- *not* creating schema, since initdb creates it", "CREATE SCHEMA public;"
    )
    assert normalise_schema(created) == created
    assert [r.name for r in SCHEMA_RULES] == [
        "restrict key",
        "pg_attver",
        "dump versions",
        "public schema owner",
    ]
    assert all(r.reason for r in SCHEMA_RULES)
