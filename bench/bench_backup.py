"""Verified backups against plain pg_dump/pg_restore, on one seeded database of 1 GB or more.

Peers, with the same PostgreSQL 18 client programs and the same role:
- dump: `pg_dump -Fc -f file` against ours, `include.backup.archive.dump` (parallel directory-format
  dump in an exported snapshot, schema.sql, expected.json and the SHA-256 manifest included);
- verify: `createdb` + single-job `pg_restore -j1` of that `-Fc` file against ours, `createdb` +
  `include.backup.archive.restore` (`pg_restore -j2`) + `include.backup.archive.compare` (schema,
  and every table's row count and content checksum, hashed over 2 sessions; sequences).

Goals: dump ratio at most 0.5, verify ratio at most 1.0. A LocalStack (without Airflow) in a
temp folder is seeded at BENCH_BACKUP_SCALE (default 10.0; scale 1.0 is about 118 MB on disk).
BENCH_BACKUP_ROUNDS (default 2) interleaved rounds, medians reported. Prints
`backup_dump: ratio=X (ours/peer) ...` and `backup_verify: ratio=X (ours/peer) ...`, each with the
peer's configuration, and the share of our time spent counting and hashing the tables
(`checksum_share`: in the dump it runs alongside pg_dump; in the verification, after the restore).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from include.backup.archive import compare, dump, restore
from include.backup.pg_programs import pg_bin, run_client

MIN_DB_BYTES = 1 << 30  # the issue asks for 1 GB or more
SCALE = float(os.environ.get("BENCH_BACKUP_SCALE", "10.0"))  # ~118 MB per 1.0 of scale
ROUNDS = int(os.environ.get("BENCH_BACKUP_ROUNDS", "2"))
# what each side runs, named in the printed lines
PEER_DUMP = "pg_dump -Fc (one job, default compression)"
OURS_DUMP = "pg_dump -Fd -j2 -Zgzip:1, every table counted and hashed over 2 sessions in its snapshot"
PEER_VERIFY = "createdb + pg_restore -j1 of the pg_dump -Fc file"
OURS_VERIFY = "createdb + pg_restore -j2 + compare (schema dumps, every table hashed over 2 sessions)"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mb(n: float) -> str:
    return f"{n / 1e6:.1f}MB"


def query(dsn: str, statement: str, *, fetch: bool = True):
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True  # VACUUM, CHECKPOINT and DROP DATABASE refuse transactions
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchone()[0] if fetch else None
    finally:
        conn.close()


def createdb(dsn: str, name: str) -> None:
    run_client([pg_bin("createdb"), "--no-password", name], dsn, "createdb")


def dropdb(dsn: str, name: str) -> None:
    run_client([pg_bin("dropdb"), "--no-password", "--if-exists", name], dsn, "dropdb")


def peer_dump(dsn: str, path: Path) -> float:
    start = time.perf_counter()
    run_client([pg_bin("pg_dump"), "-Fc", "--no-password", "-f", str(path)], dsn, "pg_dump -Fc")
    return time.perf_counter() - start


def our_dump(dsn: str, folder: Path) -> tuple[float, float]:
    """Seconds of the whole dump, and of counting and hashing the tables (alongside pg_dump)."""
    start = time.perf_counter()
    done = dump(dsn, folder)  # snapshot, schema.sql, expected.json with checksums, pg_dump, manifest
    return time.perf_counter() - start, done.checksum_seconds


def peer_verify(dsn: str, path: Path, dbname: str) -> float:
    start = time.perf_counter()
    createdb(dsn, dbname)
    run_client(
        [
            pg_bin("pg_restore"),
            "-j1",
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--no-password",
            "-d",
            dbname,
            str(path),
        ],
        dsn,
        "pg_restore -j1",
    )
    return time.perf_counter() - start


def our_verify(stack, folder: Path, dbname: str) -> tuple[float, float, float]:
    """Seconds of the whole verification, of its restore alone (the recovery time), and of
    counting and hashing the restored tables."""
    start = time.perf_counter()
    createdb(stack.app_dsn(), dbname)
    restore_seconds = restore(stack.app_dsn(dbname), folder)
    timings: dict[str, float] = {}
    problems = compare(stack.app_dsn(dbname), folder, timings=timings)
    seconds = time.perf_counter() - start
    if problems:
        raise SystemExit(f"our restore of {folder} does not match its dump: {problems}")
    return seconds, restore_seconds, timings["snapshot_seconds"]


def main() -> None:
    from devstack.stack import LocalStack

    began = time.perf_counter()
    os.environ["SEED_SCALE"] = str(SCALE)  # LocalStack.start() seeds the app database with it
    with tempfile.TemporaryDirectory(prefix="bench_backup_") as tmp:
        work = Path(tmp)
        stack = LocalStack(work / "stack", with_airflow=False, api_port=0)
        try:
            t = time.perf_counter()
            stack.start()
            dsn = stack.app_dsn()
            # settle the fresh load (hint bits, visibility map, stats) so neither side pays for it
            query(dsn, "VACUUM ANALYZE", fetch=False)
            query(stack.superuser_dsn(), "CHECKPOINT", fetch=False)
            db_size = query(dsn, "SELECT pg_database_size('app')")
            log(f"seeded scale {SCALE} in {time.perf_counter() - t:.1f}s: db_size={mb(db_size)}")
            if db_size < MIN_DB_BYTES:
                log(f"warning: db_size below {mb(MIN_DB_BYTES)}; raise BENCH_BACKUP_SCALE")

            ours_dump, peer_dumps, ours_verify, peer_verifies, ours_restore = [], [], [], [], []
            dump_checksums, verify_checksums = [], []
            for i in range(ROUNDS):
                folder, peer_file = work / f"ours_{i}", work / f"peer_{i}.dump"
                # interleaved, alternating who goes first, so drift hits both sides alike
                sides = [
                    ("peer", partial(peer_dump, dsn, peer_file), peer_dumps),
                    ("ours", partial(our_dump, dsn, folder), ours_dump),
                ]
                for name, run, times in sides if i % 2 == 0 else sides[::-1]:
                    seconds = run()
                    if name == "ours":
                        seconds, hashed = seconds
                        dump_checksums.append(hashed)
                    times.append(seconds)
                    log(f"round {i} dump {name}: {seconds:.1f}s")
                ours_size = sum(p.stat().st_size for p in folder.iterdir())
                peer_size = peer_file.stat().st_size

                sides = [
                    ("peer", partial(peer_verify, dsn, peer_file, f"peer_{i}"), peer_verifies),
                    ("ours", partial(our_verify, stack, folder, f"ours_{i}"), ours_verify),
                ]
                for name, run, times in sides if i % 2 == 0 else sides[::-1]:
                    seconds = run()
                    if name == "ours":
                        seconds, restored, hashed = seconds
                        ours_restore.append(restored)
                        verify_checksums.append(hashed)
                    times.append(seconds)
                    log(f"round {i} verify {name}: {seconds:.1f}s")
                for dbname in (f"peer_{i}", f"ours_{i}"):  # disk and cache for the next round
                    dropdb(dsn, dbname)

            o, p = statistics.median(ours_dump), statistics.median(peer_dumps)
            hashed = statistics.median(dump_checksums)
            print(
                f"backup_dump: ratio={o / p:.2f} (ours/peer) ours={o:.1f}s peer={p:.1f}s "
                f"peer_config='{PEER_DUMP}' ours_config='{OURS_DUMP}' "
                f"ours_checksum={hashed:.1f}s checksum_share={hashed / o:.0%} "
                f"ours_size={mb(ours_size)} peer_size={mb(peer_size)} db_size={mb(db_size)} "
                f"goal<=0.50 rounds={ROUNDS}",
                flush=True,
            )
            o, p = statistics.median(ours_verify), statistics.median(peer_verifies)
            hashed = statistics.median(verify_checksums)
            print(
                f"backup_verify: ratio={o / p:.2f} (ours/peer) ours={o:.1f}s peer={p:.1f}s "
                f"peer_config='{PEER_VERIFY}' ours_config='{OURS_VERIFY}' "
                f"ours_restore={statistics.median(ours_restore):.1f}s ours_checksum={hashed:.1f}s "
                f"checksum_share={hashed / o:.0%} goal<=1.00 rounds={ROUNDS}",
                flush=True,
            )
        finally:
            stack.stop()
    log(f"total bench runtime {time.perf_counter() - began:.1f}s")


if __name__ == "__main__":
    main()
