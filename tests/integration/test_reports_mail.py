"""`gpufleet report --mail`: a real SMTP server (aiosmtpd) on the loopback that insists on
STARTTLS and AUTH, with a certificate from a throw-away CA (trustme). Each tenant gets its own
report and nothing of anyone else's."""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from gpufleet import localstack
from gpufleet.reports import main as reports
from gpufleet.reports.settings import load_report_config

from .test_reports import FROM, TO, make_fleet, write_lines

USER, PASSWORD = "reports", "s3cret-pw"
RECIPIENTS = {"lab-a": ["pi-a@example.org"], "lab-b": ["pi-b@example.org", "admin-b@example.org"]}


@dataclass
class Inbox:
    messages: list[tuple[list[str], email.message.EmailMessage]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    tls_at_login: list[bool] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's hook name
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
        self.logins.append(auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?")
        self.tls_at_login.append(session.ssl is not None)
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535 itself


@pytest.fixture
def smtp(tmp_path) -> Iterator[tuple[Inbox, int, str]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    inbox = Inbox()
    port = localstack.free_port()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, tls_context=server_ctx, require_starttls=True,
        auth_required=True, auth_require_tls=True, authenticator=inbox.authenticate,
    )
    controller.start()
    try:
        yield inbox, port, str(ca_file)
    finally:
        controller.stop()


def _config(tmp_path, influxdb, bucket, port, ca_file, *, starttls=True, password=PASSWORD):
    (tmp_path / "smtp-password").write_text(password + "\n")
    recipients = "\n".join(f'"{t}" = {addrs!r}'.replace("'", '"') for t, addrs in RECIPIENTS.items())
    path = tmp_path / "report.toml"
    path.write_text(
        f"""
[influx]
url = "{influxdb.direct_url}"
database = "{bucket}"

[mail]
host = "127.0.0.1"
port = {port}
starttls = {"true" if starttls else "false"}
ca_file = "{ca_file}"
username = "{USER}"
password_file = "{tmp_path / 'smtp-password'}"
sender = "GPU accounting <gpu@example.org>"
[mail.recipients]
{recipients}
"""
    )
    return load_report_config(path)


@pytest.fixture
def fleet(influxdb, bucket, cluster_name):
    write_lines(influxdb, bucket, make_fleet(cluster_name).lines)


def test_each_tenant_gets_only_its_own_report_over_starttls(fleet, smtp, influxdb, bucket, tmp_path):
    inbox, port, ca_file = smtp
    config = _config(tmp_path, influxdb, bucket, port, ca_file)
    run = reports.run_report(config, start=FROM, end=TO, fmt="html", out=tmp_path / "out", all_tenants=True, mail_tenants=True)
    assert run.mailed == RECIPIENTS
    assert run.not_mailed == ["lab-c"]  # no recipients configured; `unallocated` is never mailed
    assert inbox.logins == [USER] and inbox.tls_at_login == [True]
    assert len(inbox.messages) == 2
    for rcpt_tos, message in inbox.messages:
        [tenant] = [t for t, addrs in RECIPIENTS.items() if addrs == rcpt_tos]
        others = {"lab-a", "lab-b", "lab-c"} - {tenant}
        assert message["Subject"].startswith(f"GPU usage report {tenant}:")
        [attachment] = list(message.iter_attachments())
        assert attachment.get_filename() == f"{tenant}.html"
        html = attachment.get_content()
        body = message.get_body(("plain",)).get_content()
        assert f"GPU usage report: {tenant}" in html
        for other in others:  # not its name, not its workloads
            assert other not in html and other not in body, (tenant, other)
        assert html.replace("\r\n", "\n").strip() == (tmp_path / "out" / f"{tenant}.html").read_text().strip()


def test_one_tenant_to_given_addresses(fleet, smtp, influxdb, bucket, tmp_path):
    inbox, port, ca_file = smtp
    config = _config(tmp_path, influxdb, bucket, port, ca_file)
    run = reports.run_report(config, start=FROM, end=TO, fmt="csv", out=tmp_path / "lab-c.csv", tenant="lab-c", mail_to=["c@example.org"])
    assert run.mailed == {"lab-c": ["c@example.org"]}
    [(rcpt_tos, message)] = inbox.messages
    assert rcpt_tos == ["c@example.org"]
    [attachment] = list(message.iter_attachments())
    assert attachment.get_content_type() == "text/csv" and "lab-a" not in attachment.get_content()


def test_a_wrong_password_is_a_clear_error(fleet, smtp, influxdb, bucket, tmp_path):
    inbox, port, ca_file = smtp
    config = _config(tmp_path, influxdb, bucket, port, ca_file, password="wrong")
    with pytest.raises(reports.ReportError, match="SMTP 127.0.0.1"):
        reports.run_report(config, start=FROM, end=TO, fmt="json", out=tmp_path / "a.json", tenant="lab-a", mail_to=["a@example.org"])
    assert inbox.messages == []


def test_a_server_without_starttls_gets_nothing(fleet, influxdb, bucket, tmp_path):
    inbox = Inbox()
    port = localstack.free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)  # plain SMTP, no TLS offered
    controller.start()
    try:
        config = _config(tmp_path, influxdb, bucket, port, "/nonexistent")
        with pytest.raises(reports.ReportError, match="does not offer STARTTLS"):
            reports.run_report(config, start=FROM, end=TO, fmt="json", out=tmp_path / "a.json", tenant="lab-a", mail_to=["a@example.org"])
    finally:
        controller.stop()
    assert inbox.messages == []
