"""How a message leaves: email over SMTP, SMS through a pluggable HTTP gateway (logged by default).

Each delivery raises `DeliveryError` with `permanent=True` when trying again cannot help (the server
refused the recipient: a 5xx), so the sender gives up at once instead of after every retry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import formatdate, parseaddr
from typing import Protocol

from subscriptions.outbox_store import OutboxRow
from subscriptions.settings import NotifySettings

log = logging.getLogger(__name__)
_WIRE = compat32.clone(linesep="\r\n")  # smtplib sends bytes as given: lines must end in CRLF already


class DeliveryError(Exception):
    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def message_id(row: OutboxRow, domain: str) -> str:
    """The same for every attempt of one outbox row: a receiver can spot the rare repeat (see docs)."""
    digest = hashlib.sha256(row.idempotency_key.encode()).hexdigest()[:32]
    return f"<{digest}.{row.id}@{domain}>"


def email_of(row: OutboxRow, sender: str, domain: str) -> MIMEMultipart | MIMEText:
    """multipart/alternative (plain text first, then HTML), or plain text alone. Built with the email
    package's compat32 classes: several times faster than EmailMessage, the same MIME on the wire."""
    text = MIMEText(row.body_text, "plain", "utf-8")
    msg: MIMEMultipart | MIMEText = text
    if row.body_html:
        msg = MIMEMultipart("alternative")
        msg.attach(text)
        msg.attach(MIMEText(row.body_html, "html", "utf-8"))
    msg["From"] = sender
    msg["To"] = row.recipient
    msg["Subject"] = Header(row.subject, "utf-8") if not row.subject.isascii() else row.subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id(row, domain)
    msg["X-Fleet-Outbox-Id"] = str(row.id)
    return msg


class EmailSender:
    """One SMTP connection, kept open between messages and reopened after an error."""

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        self._envelope_from = parseaddr(settings.mail_from)[1] or settings.mail_from

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        context = ssl.create_default_context(cafile=s.smtp_ca_file) if s.smtp_security != "none" else None
        smtp: smtplib.SMTP
        if s.smtp_security == "tls":
            smtp = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s, context=context)
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s)
            if s.smtp_security == "starttls":
                smtp.starttls(context=context)
        if s.smtp_username:
            smtp.login(s.smtp_username, s.smtp_password.get_secret_value() if s.smtp_password else "")
        return smtp

    def send(self, row: OutboxRow) -> None:
        msg = email_of(row, self.settings.mail_from, self.settings.message_id_domain)
        try:
            if self._smtp is None:
                self._smtp = self._connect()
            self._smtp.sendmail(self._envelope_from, [row.recipient], msg.as_bytes(policy=_WIRE))
        except smtplib.SMTPRecipientsRefused as exc:
            permanent = all(code >= 500 for code, _ in exc.recipients.values())
            raise DeliveryError(f"recipient refused: {exc.recipients}", permanent=permanent) from None
        except smtplib.SMTPResponseException as exc:
            self.close()
            raise DeliveryError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", permanent=exc.smtp_code >= 500) from None
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            raise DeliveryError(f"SMTP: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                self._smtp.close()
            self._smtp = None


class SmsGateway(Protocol):
    """An SMS provider: send one text to one E.164 number, raise DeliveryError on failure."""

    def send(self, to: str, text: str, key: str) -> None: ...


class LoggingSms:
    """The default: writes the SMS to the log and delivers nothing (no provider configured)."""

    def send(self, to: str, text: str, key: str) -> None:
        log.info("notify: SMS to %s (%s): %s", to, key, text)


class JsonPostSms:
    """A generic HTTP gateway: POST {"to", "text", "idempotency_key"} as JSON with a bearer token.

    2xx is delivered; 4xx (other than 408 and 429) is permanent; anything else is tried again. The key
    lets a gateway that deduplicates drop the rare repeat."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 10.0) -> None:
        self.url = url
        self._token = token
        self.timeout_s = timeout_s

    def send(self, to: str, text: str, key: str) -> None:
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        body = json.dumps({"to": to, "text": text, "idempotency_key": key}).encode()
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response and its socket
            raise DeliveryError(f"SMS gateway HTTP {exc.code}", permanent=400 <= exc.code < 500 and exc.code not in
                                (408, 429)) from None  # fmt: skip
        except (urllib.error.URLError, OSError) as exc:
            raise DeliveryError(f"SMS gateway: {exc}") from None


def sms_gateway(settings: NotifySettings) -> SmsGateway:
    if settings.sms_url:
        token = settings.sms_token.get_secret_value() if settings.sms_token else None
        return JsonPostSms(settings.sms_url, token, settings.smtp_timeout_s)
    return LoggingSms()
