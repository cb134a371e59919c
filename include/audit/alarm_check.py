"""Audit of the alarms themselves: a synthetic failure goes out through the alert path, and each
channel of its level must show it within a time limit.

The failure carries a token of letters only (the alert fingerprint blanks digits and ids, so a
token of letters keeps each audit's alert its own group: never folded into an earlier one).
`wait_for_delivery` polls one reader per channel until each has seen the token or the time is
up; a channel that could not be read counts as not delivered, with the reason. A channel that
this deployment gives no way to read back (no test mailbox, no Sentry read-back configured) is
`NotApplicable`: reported with its reason, neither passed nor failed.
"""

from __future__ import annotations

import email
import email.policy
import random
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def synthetic_token(length: int = 16) -> str:
    return "".join(random.SystemRandom().choices(string.ascii_lowercase, k=length))


@dataclass(frozen=True)
class NotApplicable:
    """A channel's reader where the deployment configures no read-back for it: why."""

    reason: str


@dataclass(frozen=True)
class Delivery:
    channel: str
    seconds: float | None  # None: not seen within the limit (or not applicable)
    problem: str = ""
    not_applicable: str = ""  # the reason, when the channel cannot be checked here

    @property
    def missing(self) -> bool:
        return self.seconds is None and not self.not_applicable

    def __str__(self) -> str:
        if self.not_applicable:
            return f"{self.channel:<7} not applicable: {self.not_applicable}"
        if self.seconds is not None:
            return f"{self.channel:<7} delivered after {self.seconds:.1f} s"
        return f"{self.channel:<7} NOT delivered{': ' + self.problem if self.problem else ''}"


def wait_for_delivery(
    readers: dict[str, Callable[[], bool] | str | NotApplicable],
    deadline_seconds: float,
    poll_seconds: float = 0.5,
) -> list[Delivery]:
    """Poll each reader (a callable that says whether the token arrived, a string saying why the
    channel cannot be read, or `NotApplicable`) until all have seen it or `deadline_seconds` have
    passed."""
    start = time.monotonic()
    seen: dict[str, float] = {}
    skipped = {c: r.reason for c, r in readers.items() if isinstance(r, NotApplicable)}
    problems = {c: r for c, r in readers.items() if isinstance(r, str)}
    pending = {c: r for c, r in readers.items() if callable(r)}
    while pending:
        for channel, read in list(pending.items()):
            try:
                arrived = read()
            except Exception as exc:  # a reader that fails says why, and is asked again
                problems[channel], arrived = f"{type(exc).__name__}: {exc}", False
            if arrived:
                seen[channel] = time.monotonic() - start
                problems.pop(channel, None)
                del pending[channel]
        if not pending or time.monotonic() - start > deadline_seconds:
            break
        time.sleep(poll_seconds)
    return [
        Delivery(c, None, not_applicable=skipped[c])
        if c in skipped
        else Delivery(
            c,
            seen.get(c),
            problems.get(c, "" if c in seen else f"not seen within {deadline_seconds} s"),
        )
        for c in readers
    ]


# --- read-back of the channels that deliver into a folder --------------------------------------


def read_messages(folder: Path) -> list[str]:
    """Every message in a folder of ``.eml`` files (a mail sink's or a test mailbox's), oldest
    first: its headers and its decoded text parts (bodies are often base64 on the wire; a grep
    for a token or a secret must see the decoded text)."""
    texts = []
    for path in sorted(folder.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        parts = [
            part.get_content()
            for part in message.walk()
            if not part.is_multipart() and part.get_content_maintype() == "text"
        ]
        headers = "".join(f"{k}: {v}\n" for k, v in message.items())
        texts.append(headers + "\n" + "\n".join(parts))
    return texts


def read_envelopes(folder: Path) -> list[str]:
    """Every Sentry envelope in a folder of ``.envelope`` files, oldest first, as text (header
    line, then item lines)."""
    return [p.read_text(errors="replace") for p in sorted(folder.glob("*.envelope"))]
