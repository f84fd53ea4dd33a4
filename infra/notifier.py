"""Outgoing mail. The messages the platform sends carry ids and links, never personal data."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

from infra.settings import Settings

SMTP_TIMEOUT_SECONDS = 10.0


class Notifier:
    def __init__(self, settings: Settings) -> None:
        self._host = settings.smtp_host
        self._port = settings.smtp_port
        self._sender = settings.mail_from

    def send(
        self,
        *,
        to: list[str],
        subject: str,
        body: str,
        message_id: str,
        timeout: float = SMTP_TIMEOUT_SECONDS,
    ) -> None:
        """Send one message. ``message_id`` is deterministic per business event, so a retried
        activity sends a message a mail system can recognise as the same. ``timeout``
        bounds each wait on the relay (connect, greeting, each reply)."""
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = ", ".join(to)
        message["Subject"] = subject
        message["Message-ID"] = f"<{message_id}@bfc.example>"
        message.set_content(body)
        with smtplib.SMTP(self._host, self._port, timeout=timeout) as smtp:
            smtp.send_message(message)
