"""An SMTP server that accepts every message and keeps it as an .eml file, so tests can read mail."""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import time
import uuid
from pathlib import Path

from aiosmtpd.smtp import SMTP


class MaildirHandler:
    """Writes each accepted message to `<folder>/<time>-<uuid>.eml` atomically (tmp + rename)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        name = f"{time.time_ns()}-{uuid.uuid4().hex}.eml"
        tmp = self.folder / f".{name}.tmp"
        header = f"X-Envelope-From: {envelope.mail_from}\r\nX-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        tmp.write_bytes(header.encode() + envelope.original_content)
        tmp.rename(self.folder / name)
        return "250 Message accepted for delivery"


def read_messages(folder: Path) -> list[str]:
    """Every message the sink has kept, oldest first: its headers and its decoded text parts
    (bodies are often base64 on the wire; a grep for a secret must see the decoded text)."""
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


async def serve(host: str, port: int, folder: Path) -> None:
    handler = MaildirHandler(folder)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="smtp-sink.local"), host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--folder", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.folder))


if __name__ == "__main__":
    main()
