"""Messages rendered from Jinja2 templates (package data, autoescaped HTML), dates in the customer's locale.

Pure: the templates are read once from the package and rendering is string work. The email of a
reminder has an HTML table (device, plan, end date, days left) and a plain-text part with the same
rows; the SMS is one summary line, cut to `SMS_MAX` characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from subscriptions.model import Channel
from subscriptions.reminders import Message

SMS_MAX = 480  # three concatenated SMS segments


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    body_text: str
    body_html: str | None


@cache
def _env() -> Environment:
    return Environment(
        loader=PackageLoader("subscriptions", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=True, default=True),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


@cache
def _text_env() -> Environment:
    """The plain-text and SMS parts are not HTML: escaping would put `&amp;` into them."""
    return Environment(
        loader=PackageLoader("subscriptions", "templates"), autoescape=False, undefined=StrictUndefined,
        keep_trailing_newline=True,
    )  # fmt: skip


@cache
def locale_of(tag: str) -> Locale:
    """A BCP 47 tag (`de-DE`, `pt_BR`, `fr`) as a babel locale; English where babel knows no such locale."""
    try:
        return Locale.parse(tag.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return Locale.parse("en")


def local_date(when: datetime, tag: str) -> str:
    return format_date(when.date(), format="medium", locale=locale_of(tag))


def render_message(message: Message) -> Rendered:
    """A reminder or overdue notice, for its channel."""
    loc = message.customer.locale
    lines = [
        {"device": ln.device_id or "(no device)", "plan": ln.plan_name, "end": local_date(ln.period_end, loc),
         "days_left": ln.days_left}
        for ln in message.lines
    ]  # fmt: skip
    count = len(lines)
    soonest = min((ln.period_end for ln in message.lines), default=None)
    if message.kind == "overdue":
        subject = "Payment overdue: your devices may be locked"
        intro = f"We have not received the payment for {count} device{'s' if count != 1 else ''}."
        closing = "Please pay as soon as possible, or the devices below may be locked."
    else:
        subject = f"Your subscription ends on {local_date(soonest, loc)}" if soonest else "Your subscription"
        intro = f"The subscription of {count} device{'s' if count != 1 else ''} ends soon:"
        closing = "Renew in time to keep them running."
    values: dict[str, Any] = {
        "subject": subject, "greeting": f"Hello {message.customer.name},", "intro": intro, "closing": closing,
        "lines": lines, "lang": locale_of(loc).language,
    }  # fmt: skip
    if message.channel is Channel.SMS:
        ends = local_date(soonest, loc) if soonest else ""
        values["sms"] = (
            f"{subject}. {count} device{'s' if count != 1 else ''}: "
            + ", ".join(line["device"] for line in lines)
            + (f". Ends {ends}." if message.kind == "reminder" else ".")
        )
        text = _text_env().get_template("reminder.sms.j2").render(values).strip()
        return Rendered("", _cut(text), None)
    text = _text_env().get_template("reminder.txt.j2").render(values)
    html = _env().get_template("reminder.html.j2").render(values)
    return Rendered(subject, text, html)


def render_welcome(name: str, plan: str, end: datetime, devices: Sequence[str], tag: str) -> Rendered:
    values = {"name": name, "plan": plan, "end": local_date(end, tag), "devices": list(devices)}
    return Rendered("Welcome", _text_env().get_template("welcome.txt.j2").render(values), None)


def render_digest(since: datetime, locked: Sequence[dict[str, Any]], failed: Sequence[dict[str, Any]]) -> Rendered:
    values = {"since": since.isoformat(timespec="minutes"), "locked": locked, "failed": failed}
    subject = f"Fleet digest: {len(locked)} locked, {len(failed)} failed messages"
    values["subject"] = subject
    text = _text_env().get_template("digest.txt.j2").render(values)
    html = _env().get_template("digest.html.j2").render(values)
    return Rendered(subject, text, html)


def _cut(text: str) -> str:
    return text if len(text) <= SMS_MAX else text[: SMS_MAX - 1] + "…"
