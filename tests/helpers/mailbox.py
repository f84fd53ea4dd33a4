"""Reading what the stack's SMTP sink received (one ``.eml`` file per message)."""

from __future__ import annotations

import email
import time
from email.message import Message
from pathlib import Path


def mails_to(mailbox: Path, address: str, *, at_least: int = 1, wait: float = 5.0) -> list[Message]:
    """Messages the sink received for ``address`` (waiting a little for the first ones)."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for path in sorted(mailbox.glob("*.eml")):
            raw = path.read_bytes()
            if address.encode() in raw:
                message = email.message_from_bytes(raw)
                if address in (message["X-Envelope-To"] or ""):
                    found.append(message)
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def body_of(message: Message) -> str:
    parts = message.walk() if message.is_multipart() else [message]
    texts = []
    for part in parts:
        if part.get_content_type() in {"text/plain", "text/html"}:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                texts.append(payload.decode(part.get_content_charset() or "utf-8"))
    return "\n".join(texts)
