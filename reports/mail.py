"""The only module of gpufleet.reports that talks SMTP: one message per tenant, STARTTLS before
anything else is said, then AUTH with the configured credentials.

A tenant never receives another tenant's data: `tenant_message` takes one tenant's rendered
report and that tenant's own recipients, and nothing else; `send` refuses a plain-text session
unless the configuration says `starttls = false` (for a relay on the loopback only)."""

from __future__ import annotations

import mimetypes
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from .model import TenantReport
from .document import fmt_hours, fmt_money, fmt_pct, fmt_time
from .settings import MailSettings


class MailError(RuntimeError):
    """The SMTP server could not be reached, refused STARTTLS or the credentials, or a recipient."""


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content: bytes


def summary_text(report: TenantReport) -> str:
    f, cur = report.figures, report.prices.currency
    lines = [
        f"GPU usage of {report.tenant} from {fmt_time(report.start_ns)} to {fmt_time(report.end_ns)}",
        "",
        f"GPU-hours allocated:   {fmt_hours(f.gpu_hours)}",
        f"GPU-hours busy:        {fmt_hours(f.busy_gpu_hours)} (efficiency {fmt_pct(f.efficiency)})",
        f"idle allocated hours:  {fmt_hours(f.idle_gpu_hours)}",
        f"energy:                {'–' if f.energy_kwh is None else f'{f.energy_kwh:,.2f} kWh'}",
        f"cost:                  {fmt_money(f.cost.total, cur)}",
        f"incidents:             {f.incident_count} (availability {fmt_pct(f.availability)})",
        "",
        "The full report is attached.",
    ]
    return "\n".join(lines) + "\n"


def tenant_message(report: TenantReport, recipients: Sequence[str], sender: str, attachment: Attachment) -> EmailMessage:
    if not recipients:
        raise ValueError(f"no recipients for tenant {report.tenant}")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = f"GPU usage report {report.tenant}: {fmt_time(report.start_ns)[:10]} to {fmt_time(report.end_ns)[:10]}"
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="gpufleet")
    message.set_content(summary_text(report))
    ctype = mimetypes.guess_type(attachment.filename)[0] or "application/octet-stream"
    maintype, subtype = ctype.split("/", 1)
    if maintype == "text":  # our HTML, CSV and JSON are UTF-8; say so, or readers guess Latin-1
        text = attachment.content.decode("utf-8")
        message.add_attachment(text, subtype=subtype, charset="utf-8", filename=attachment.filename)
    else:
        message.add_attachment(attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename)
    return message


def _tls_context(settings: MailSettings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)


def send(settings: MailSettings, messages: Sequence[EmailMessage]) -> int:
    """Send messages over one SMTP session; the number sent. Raises MailError."""
    if not messages:
        return 0
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s) as smtp:
            smtp.ehlo()
            if settings.starttls:
                if not smtp.has_extn("starttls"):
                    raise MailError(f"{settings.host}:{settings.port} does not offer STARTTLS; refusing to send in clear text")
                smtp.starttls(context=_tls_context(settings))
                smtp.ehlo()
            if settings.username:
                smtp.login(settings.username, settings.password() or "")
            for message in messages:
                smtp.send_message(message)
    except (smtplib.SMTPException, OSError) as exc:  # ssl.SSLError is an OSError
        raise MailError(f"SMTP {settings.host}:{settings.port}: {exc}") from None
    return len(messages)


def attachment_from(path: Path) -> Attachment:
    return Attachment(path.name, path.read_bytes())
