"""The SMTP sink: the outside world's mail servers, played locally.

A small SMTP server (RFC 5321 subset: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) that
accepts every message and keeps it as a ``.eml`` file in its mailbox folder, so tests and
developers can read what the platform sent. Run: ``python -m infra.sandbox.smtp_sink``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from pathlib import Path

MAX_MESSAGE_BYTES = 1_000_000


class Mailbox:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def store(self, sender: str, recipients: list[str], data: bytes) -> Path:
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        envelope = f"X-Envelope-From: {sender}\r\nX-Envelope-To: {', '.join(recipients)}\r\n"
        path = self.folder / name
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(envelope.encode() + data)
        tmp.rename(path)  # readers never see half a message
        return path


async def _session(
    mailbox: Mailbox, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    async def reply(line: str) -> None:
        writer.write(f"{line}\r\n".encode())
        await writer.drain()

    sender = ""
    recipients: list[str] = []
    await reply("220 bfc-smtp-sink ready")
    while line := await reader.readline():
        command = line.decode(errors="replace").strip()
        verb = command.split(" ", 1)[0].upper()
        if verb in {"EHLO", "HELO"}:
            await reply("250-bfc-smtp-sink" if verb == "EHLO" else "250 bfc-smtp-sink")
            if verb == "EHLO":
                await reply(f"250 SIZE {MAX_MESSAGE_BYTES}")
        elif verb == "MAIL":
            sender = command.partition(":")[2].strip(" <>")
            recipients = []
            await reply("250 OK")
        elif verb == "RCPT":
            recipients.append(command.partition(":")[2].strip(" <>"))
            await reply("250 OK")
        elif verb == "DATA":
            await reply("354 end with <CRLF>.<CRLF>")
            lines: list[bytes] = []
            while (chunk := await reader.readline()) not in (b".\r\n", b".\n", b""):
                lines.append(chunk[1:] if chunk.startswith(b"..") else chunk)
            mailbox.store(sender, recipients, b"".join(lines))
            await reply("250 OK: queued")
        elif verb in {"RSET", "NOOP"}:
            if verb == "RSET":
                sender, recipients = "", []
            await reply("250 OK")
        elif verb == "QUIT":
            await reply("221 bye")
            break
        else:
            await reply("502 command not implemented")
    writer.close()


async def serve(host: str, port: int, mailbox: Mailbox) -> None:
    server = await asyncio.start_server(lambda r, w: _session(mailbox, r, w), host=host, port=port)
    async with server:
        await server.serve_forever()


def main() -> int:
    host = os.environ.get("BFC_HOST", "127.0.0.1")
    port = int(os.environ.get("BFC_SMTP_PORT", "1025"))
    folder = Path(os.environ.get("BFC_SMTP_MAILBOX", ".stack/smtp/mailbox"))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, port, Mailbox(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
