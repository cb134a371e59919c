"""Verified backups and restores: dumps with a SHA-256 manifest, restores, the comparison that
proves a restore faithful, and the catalog of backups.

- ``pg_programs``: the PostgreSQL client programs (pg_dump, pg_restore) and databases on a server;
- ``archive``: dump, manifest, restore, and the snapshot a restore must reproduce;
- ``catalog``: the ``backups`` table's rows and retention.
"""


class BackupError(RuntimeError):
    """A dump, restore or check failed; the message names the object and the value."""


class ChecksumMismatch(BackupError):
    pass
