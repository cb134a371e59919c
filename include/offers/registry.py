"""Model versions: skops artifacts in S3 checked by SHA-256, promotion gates, one-step rollback.

Rows live in `model_versions` (one champion per model, enforced by a partial unique index).
Functions take a DB-API cursor and a boto3 S3 client, so they run with or without Airflow.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# What an offer model artifact may contain beyond the types skops trusts by default: exactly
# the parts of include.offers.model.build_pipeline. Anything else is refused at load time.
ALLOWED_TYPES = frozenset(
    {
        "functools.partial",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.utils.validation.check_array",
    }
)


class ArtifactRefused(Exception):
    """A model artifact failed its integrity or safety check and was not loaded."""


# What a version's evaluation on held-out data records before it may be promoted (its ROC and
# calibration plots are stored with it, in `model_version_plots`).
EVALUATION = ("auc", "log_loss", "brier", "calibration_error", "policy_roi_cents_per_impression")
PLOTS = ("roc", "calibration")


class NotEvaluated(Exception):
    """A version was to be promoted without a recorded evaluation."""


class ChampionChanged(Exception):
    """A rollback named a champion that is no longer the champion (and was not rolled back to
    the current one)."""


@dataclass(frozen=True)
class Gates:
    """What a challenger must show to replace the champion."""

    margin_auc: float = 0.002  # beat the champion's AUC on the same holdout by at least this
    min_auc: float = 0.60
    max_log_loss: float = 0.60
    max_brier: float = 0.20
    min_prediction_std: float = 0.005  # below this the predictions have collapsed


@dataclass(frozen=True)
class Version:
    id: int
    version: int
    status: str
    artifact_uri: str
    artifact_sha256: str
    metrics: dict[str, Any]


# --- artifacts -----------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def skops_io():
    """skops.io, imported without a flood of warnings. On import it looks for each of about 290
    scipy ufuncs in every loaded module, and in a task process those include Airflow's
    deprecated-module shims, which answer every lookup with a FutureWarning: over a thousand
    lines in the task's log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"skops\.")
        import skops.io

    return skops.io


def dump_model(pipeline) -> bytes:
    return skops_io().dumps(pipeline)


def load_model(data: bytes, expected_sha256: str):
    """The pipeline in `data`, after checking its hash and that it holds only allowed types."""
    sio = skops_io()
    actual = sha256_bytes(data)
    if actual != expected_sha256.strip():
        raise ArtifactRefused(f"artifact SHA-256 {actual} differs from the registry's {expected_sha256}")
    try:
        untrusted = set(sio.get_untrusted_types(data=data))
    except Exception as error:  # not a skops file at all
        raise ArtifactRefused(f"artifact is not a readable skops file: {error}") from error
    unexpected = untrusted - ALLOWED_TYPES
    if unexpected:
        raise ArtifactRefused(f"artifact holds types outside the allowlist: {sorted(unexpected)}")
    return sio.loads(data, trusted=sorted(untrusted))


def s3_location(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def version_prefix(bucket: str, model_name: str, version: int) -> str:
    return f"s3://{bucket}/{model_name}/v{version:04d}/"


def put_object(s3, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    bucket, key = s3_location(uri)
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)


def get_object(s3, uri: str) -> bytes:
    bucket, key = s3_location(uri)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def fetch_model(s3, version: Version):
    """Download and load a registered version; ArtifactRefused when it does not check out."""
    return load_model(get_object(s3, version.artifact_uri), version.artifact_sha256)


# --- the registry table ----------------------------------------------------------------------------

_COLUMNS = "id, version, status, artifact_uri, artifact_sha256, metrics"


def _version(row) -> Version:
    metrics = row[5] if isinstance(row[5], dict) else json.loads(row[5])
    return Version(row[0], row[1], row[2], row[3], row[4], metrics)


def register(
    cur,
    model_name: str,
    *,
    version: int,
    artifact_uri: str,
    artifact_sha256: str,
    metrics: dict[str, Any],
    trained_from,
    trained_to,
    data_fingerprint: str,
    code_version: str,
) -> Version:
    """Insert a candidate; a re-run with the same version number updates the same row."""
    cur.execute(
        f"""
        INSERT INTO model_versions (model_name, version, status, metrics, artifact_uri,
            artifact_sha256, trained_from, trained_to, data_fingerprint, code_version)
        VALUES (%s, %s, 'candidate', %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (model_name, version) DO UPDATE SET
            metrics = EXCLUDED.metrics, artifact_uri = EXCLUDED.artifact_uri,
            artifact_sha256 = EXCLUDED.artifact_sha256, trained_from = EXCLUDED.trained_from,
            trained_to = EXCLUDED.trained_to, data_fingerprint = EXCLUDED.data_fingerprint,
            code_version = EXCLUDED.code_version
        RETURNING {_COLUMNS}
        """,  # noqa: S608 (column list is a module constant)
        (
            model_name,
            version,
            json.dumps(metrics),
            artifact_uri,
            artifact_sha256,
            trained_from,
            trained_to,
            data_fingerprint,
            code_version,
        ),
    )
    return _version(cur.fetchone())


def next_version(cur, model_name: str) -> int:
    cur.execute(
        "SELECT coalesce(max(version), 0) + 1 FROM model_versions WHERE model_name = %s",
        (model_name,),
    )
    return cur.fetchone()[0]


def get(cur, version_id: int) -> Version:
    cur.execute(f"SELECT {_COLUMNS} FROM model_versions WHERE id = %s", (version_id,))  # noqa: S608
    row = cur.fetchone()
    if row is None:
        raise LookupError(f"model version id {version_id} does not exist")
    return _version(row)


def champion(cur, model_name: str) -> Version | None:
    cur.execute(
        f"SELECT {_COLUMNS} FROM model_versions WHERE model_name = %s AND status = 'champion'",  # noqa: S608
        (model_name,),
    )
    row = cur.fetchone()
    return _version(row) if row else None


def champion_at(cur, model_name: str, at: datetime) -> Version | None:
    """The champion at time `at`: the version made champion last at or before it (promotions and
    rollbacks both set `promoted_at`). A version that was champion before and is again since
    keeps only its newest `promoted_at`, so for a time before that return it answers an older
    version (or None): a rollback resolved from it is refused, never applied twice."""
    cur.execute(
        f"SELECT {_COLUMNS} FROM model_versions WHERE model_name = %s AND promoted_at <= %s"  # noqa: S608
        " ORDER BY promoted_at DESC, id DESC LIMIT 1",
        (model_name, at),
    )
    row = cur.fetchone()
    return _version(row) if row else None


def sanity_failures(metrics: dict[str, Any], gates: Gates) -> list[str]:
    """The sanity floors a version's metrics break (empty when it passes)."""
    failures = []
    if metrics["auc"] < gates.min_auc:
        failures.append(f"auc {metrics['auc']:.4f} < floor {gates.min_auc}")
    if metrics["log_loss"] > gates.max_log_loss:
        failures.append(f"log_loss {metrics['log_loss']:.4f} > ceiling {gates.max_log_loss}")
    if metrics["brier"] > gates.max_brier:
        failures.append(f"brier {metrics['brier']:.4f} > ceiling {gates.max_brier}")
    if metrics["prediction_std"] < gates.min_prediction_std:
        failures.append(
            f"predictions collapsed: std {metrics['prediction_std']:.5f} < {gates.min_prediction_std}"
        )
    return failures


def decide(challenger: dict[str, Any], champion: dict[str, Any] | None, gates: Gates) -> tuple[bool, str]:
    """Promote or keep, and why. Both metric sets must come from the same holdout rows."""
    failures = sanity_failures(challenger, gates)
    if failures:
        return False, "challenger fails sanity checks: " + "; ".join(failures)
    if champion is None:
        return True, "no champion yet; challenger passes sanity checks"
    needed = champion["auc"] + gates.margin_auc
    if challenger["auc"] < needed:
        return False, (
            f"challenger auc {challenger['auc']:.4f} does not beat champion auc "
            f"{champion['auc']:.4f} + margin {gates.margin_auc}"
        )
    return (
        True,
        f"challenger auc {challenger['auc']:.4f} >= champion {champion['auc']:.4f} + margin",
    )


def store_plots(cur, version_id: int, plots: dict[str, bytes]) -> None:
    """A version's evaluation plots (PNG), kept in the database: they outlive the object store."""
    for name, png in plots.items():
        cur.execute(
            "INSERT INTO model_version_plots (model_version_id, name, png) VALUES (%s, %s, %s)"
            " ON CONFLICT (model_version_id, name) DO UPDATE SET png = EXCLUDED.png, created_at = now()",
            (version_id, name, png),
        )


def stored_plots(cur, version_id: int) -> dict[str, bytes]:
    cur.execute("SELECT name, png FROM model_version_plots WHERE model_version_id = %s", (version_id,))
    return {name: bytes(png) for name, png in cur.fetchall()}


def promote(cur, model_name: str, version_id: int) -> None:
    """Make `version_id` the champion; the old champion becomes `retired` (still loadable).
    NotEvaluated when the version has no recorded evaluation (EVALUATION and its PLOTS)."""
    version = get(cur, version_id)
    missing = [k for k in EVALUATION if version.metrics.get(k) is None]
    cur.execute("SELECT name FROM model_version_plots WHERE model_version_id = %s", (version_id,))
    stored = {r[0] for r in cur.fetchall()}
    missing += [f"{p} plot" for p in PLOTS if p not in stored]
    if missing:
        raise NotEvaluated(
            f"model version id {version_id} has no recorded evaluation ({', '.join(missing)}):"
            " evaluate it on held-out data before promoting it"
        )
    cur.execute(
        "UPDATE model_versions SET status = 'retired' WHERE model_name = %s AND status = 'champion'"
        " AND id <> %s",
        (model_name, version_id),
    )
    cur.execute(
        "UPDATE model_versions SET status = 'champion', promoted_at = now()"
        " WHERE id = %s AND model_name = %s",
        (version_id, model_name),
    )
    if cur.rowcount != 1:
        raise LookupError(f"model version id {version_id} of {model_name!r} does not exist")


def reject(cur, version_id: int) -> None:
    cur.execute(
        "UPDATE model_versions SET status = 'rejected' WHERE id = %s AND status = 'candidate'",
        (version_id,),
    )


def rollback(cur, model_name: str, champion_id: int | None = None) -> tuple[Version, Version]:
    """One step back: the champion is rejected and the previously promoted version returns.

    Returns (rolled back, restored). The previous champion is the most recently promoted version
    that is not the current one; its artifact is untouched, so it loads as before.

    `champion_id` names the champion to roll back (what the person asking saw). When another is
    champion, the rollback is refused (ChampionChanged), unless that one was rolled back to the
    current champion already: a double-submitted or retried rollback then returns what the first
    did and changes nothing, so the champion moves back once.
    """
    current = champion(cur, model_name)
    if champion_id is not None and (current is None or current.id != champion_id):
        try:
            named = get(cur, champion_id)
        except LookupError as missing:
            raise ChampionChanged(f"rollback of {model_name!r} names {missing}") from None
        if current is not None and named.metrics.get("rolled_back_to") == current.id:
            return named, current
        raise ChampionChanged(
            f"rollback of {model_name!r} names champion v{named.version} (id {named.id}), but the "
            + (f"champion is v{current.version} (id {current.id})" if current else "model has no champion")
            + ": refused; reload the page and ask again"
        )
    if current is None:
        raise LookupError(f"{model_name!r} has no champion to roll back from")
    cur.execute(
        f"""
        SELECT {_COLUMNS} FROM model_versions
        WHERE model_name = %s AND id <> %s AND promoted_at IS NOT NULL AND status = 'retired'
        ORDER BY promoted_at DESC, id DESC LIMIT 1
        """,  # noqa: S608
        (model_name, current.id),
    )
    row = cur.fetchone()
    if row is None:
        raise LookupError(f"{model_name!r} has no earlier champion to roll back to")
    previous = _version(row)
    # the rolled-back version is rejected, so a second rollback goes further back, not forth
    cur.execute(
        "UPDATE model_versions SET status = 'rejected', metrics = metrics || jsonb_build_object("
        "'rolled_back_to', %s::bigint) WHERE id = %s",
        (previous.id, current.id),
    )
    cur.execute(
        "UPDATE model_versions SET status = 'champion', promoted_at = now() WHERE id = %s",
        (previous.id,),
    )
    return get(cur, current.id), get(cur, previous.id)
