"""The ``email`` connector: missed-call alerts and call summaries by SMTP (aiosmtplib).

SMTP has no idempotency of its own, so the connector brings two: a Message-ID derived from
(integration, call, phase, connector), identical on every retry so mail systems can recognise the
same message, and a ``links`` record of the recipients the server has accepted, written before
success is reported, so an accepted message is never sent to them again. 4xx replies and
connection trouble are retried; 5xx replies are final, with the server's own words.
"""

from __future__ import annotations

import hashlib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from importlib import resources
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiosmtplib
import msgspec

from relay import (
    MESSAGE_KINDS,
    AuthError,
    Connector,
    ConnectorConfig,
    ConnectorContext,
    DeliveryContext,
    DeliveryError,
    Event,
    PermanentError,
    RetryableError,
    TemplateFile,
    hookimpl,
    once_key,
    template_source,
    template_values,
)

PARTS = ("subject", "text", "html")
DEFAULT_PORTS = {"tls": 465, "starttls": 587, "none": 25}
_SUFFIX = {"subject": "subject.j2", "text": "txt.j2", "html": "html.j2"}


def default_templates(kind: str) -> dict[str, str | None]:
    """The shipped templates of a kind; presence and SMS notices have no HTML part."""
    folder = resources.files(__package__) / "templates" / "email"
    found: dict[str, str | None] = {}
    for part, suffix in _SUFFIX.items():
        entry = folder / f"{kind}.{suffix}"
        found[part] = entry.read_text(encoding="utf-8") if entry.is_file() else None
    return found


def address(value: str) -> str:
    """The addr-spec of ``Name <a@b>`` or ``a@b``; ValueError when there is none."""
    _, addr = parseaddr(value)
    if "@" not in addr or addr.startswith("@") or addr.endswith("@"):
        raise ValueError(f"{value!r} is not an email address")
    return addr


def one_line(text: str) -> str:
    """Headers are one line: a template's newlines must not become header injection."""
    return " ".join(text.split())


class EmailTemplates(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    subject: str | TemplateFile | None = None
    text: str | TemplateFile | None = None
    html: str | TemplateFile | None = None


class EmailConfig(ConnectorConfig):
    host: str
    sender: str = msgspec.field(name="from")
    to: list[str]
    port: int | None = None  # default: 465 (tls), 587 (starttls), 25 (none)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    timeout: float = 10.0  # per SMTP operation; keep it below delivery.timeout
    ca_file: str | None = None  # a CA bundle (PEM) for a server with a private certificate
    message_id_domain: str | None = None  # default: the domain of `from`
    timezone: str = "UTC"  # for the times the templates show
    templates: dict[str, EmailTemplates] = {}  # overrides, by message kind
    allow_http_links: bool = False  # recording URLs: https only unless the operator opts in

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise ValueError("`host` must name the SMTP server")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError("`port` must be between 1 and 65535")
        if (self.username is None) != (self.password is None):
            raise ValueError("`username` and `password` go together")
        if self.timeout <= 0:
            raise ValueError("`timeout` must be a positive number of seconds")
        for key, values in (("from", [self.sender]), ("to", self.to)):
            try:
                [address(v) for v in values]
            except ValueError as exc:
                raise ValueError(f"`{key}`: {exc}") from None
        if not self.to:
            raise ValueError("`to` must list at least one recipient")
        if self.ca_file is not None:
            try:
                ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"`ca_file`: cannot load {self.ca_file}: {exc}") from None
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            hint = "use an IANA name like Europe/London"
            raise ValueError(f"`timezone`: unknown time zone {self.timezone!r}; {hint}") from None
        for kind, override in self.templates.items():
            self._check_templates(kind, override)

    def _check_templates(self, kind: str, override: EmailTemplates) -> None:
        if kind not in MESSAGE_KINDS:
            template_source("", f"templates.{kind}", kind)  # raises, naming the known kinds
        for part in PARTS:
            value = getattr(override, part)
            if value is not None:
                key = f"templates.{kind}.{part}"
                source = template_source(value, key, kind, html=part == "html")
                setattr(override, part, source)  # read once, here: not per delivery


class EmailConnector(Connector):
    type = "email"
    Config = EmailConfig
    config: EmailConfig

    def __init__(self, name: str, config: EmailConfig) -> None:
        super().__init__(name, config)
        self.templates: dict[str, dict[str, str | None]] = {}
        for kind in MESSAGE_KINDS:
            override = config.templates.get(kind, EmailTemplates())
            self.templates[kind] = {
                part: getattr(override, part) or default
                for part, default in default_templates(kind).items()
            }
        self.recipients = [address(v) for v in config.to]
        self.envelope_sender = address(config.sender)
        self.domain = config.message_id_domain or self.envelope_sender.rpartition("@")[2]

    def message_id(self, event: Event, ctx: ConnectorContext) -> str:
        """Same (integration, call, phase, connector) → same Message-ID, on every retry."""
        digest = hashlib.sha256(f"{once_key(event)}|{ctx.name}".encode()).hexdigest()[:40]
        return f"<{digest}@{self.domain}>"

    def compose(self, event: Event, ctx: DeliveryContext) -> EmailMessage | None:
        values = template_values(
            event,
            ctx,
            timezone=self.config.timezone,
            allow_http_links=self.config.allow_http_links,
        )
        kind = values["kind"]
        if kind is None:
            return None
        parts = self.templates[kind]
        try:
            rendered = {
                part: ctx.render(source, html=part == "html", **values)
                for part, source in parts.items()
                if source is not None
            }
        except Exception as exc:  # a runtime error in an admin's template
            raise PermanentError(f"email template {kind}: {type(exc).__name__}: {exc}") from None
        message = EmailMessage()
        message["From"] = self.config.sender
        message["To"] = ", ".join(self.config.to)
        message["Subject"] = one_line(rendered.get("subject", ""))
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = self.message_id(event, ctx)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
        if event.call is not None:
            message["X-Wildix-Call-Id"] = one_line(event.call.id)
        message.set_content(rendered.get("text", ""), cte="quoted-printable")
        if rendered.get("html"):
            message.add_alternative(rendered["html"], subtype="html")
        return message

    async def deliver(self, event: Event, ctx: DeliveryContext) -> None:
        key = f"sent:{once_key(event)}"
        sent = await ctx.links.get(key) or {}
        accepted = set(sent.get("accepted", []))
        pending = [r for r in self.recipients if r not in accepted]
        if not pending:
            ctx.log.info("already accepted by the SMTP server: %s", sent.get("message_id"))
            return
        message = self.compose(event, ctx)
        if message is None:
            ctx.log.debug("no email for %s events", event.type)
            return
        try:
            refused, _reply = await self._send(message, pending)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = {r.recipient: r for r in exc.recipients}
        except aiosmtplib.SMTPException as exc:
            raise smtp_error(exc) from None
        ctx.status_code = 250  # for the attempt history: the server took the message
        newly = [r for r in pending if r not in refused]
        if newly:  # before reporting anything: these must never get it twice
            record = {
                "message_id": message["Message-ID"],
                "accepted": sorted(accepted | set(newly)),
            }
            await ctx.links.set(key, record)
        if refused:
            raise refused_error(refused)
        ctx.log.info("accepted for %d recipient(s): %s", len(newly), message["Message-ID"])

    async def _send(self, message: EmailMessage, recipients: list[str]) -> Any:
        config = self.config
        return await aiosmtplib.send(
            message,
            sender=self.envelope_sender,
            recipients=recipients,
            hostname=config.host,
            port=config.port or DEFAULT_PORTS[config.security],
            username=config.username,
            password=config.password,
            use_tls=config.security == "tls",
            start_tls=config.security == "starttls",  # required, never a silent downgrade
            cert_bundle=config.ca_file,
            timeout=config.timeout,
        )

    async def check(self, ctx: ConnectorContext) -> None:
        """Connect, TLS and log in as a delivery would, then quit without sending."""
        config = self.config
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port or DEFAULT_PORTS[config.security],
            use_tls=config.security == "tls",
            start_tls=config.security == "starttls",
            cert_bundle=config.ca_file,
            timeout=config.timeout,
        )
        try:
            async with client:
                if config.username is not None and config.password is not None:
                    await client.login(config.username, config.password)
        except aiosmtplib.SMTPException as exc:
            raise smtp_error(exc) from None


def smtp_error(exc: aiosmtplib.SMTPException) -> DeliveryError:
    """4xx and connection trouble → retry; 5xx → final, with the server's reply text."""
    code = getattr(exc, "code", None)
    text = one_line(getattr(exc, "message", None) or str(exc))
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        return RetryableError(f"smtp: timed out: {text}")
    if isinstance(exc, aiosmtplib.SMTPResponseException) and isinstance(code, int):
        message = f"smtp: {code} {text}"
        if 400 <= code < 500:
            return RetryableError(message, status_code=code)
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            return AuthError(
                f"{message}: the SMTP server rejected the login; fix `username` / `password` in"
                " config.yaml and run `relay reload`: the deliveries wait and resume on their own"
                " once the login works",
                status_code=code,
            )
        if code >= 500:
            return PermanentError(message, status_code=code)
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected):
        return RetryableError(f"smtp: {text}")
    return PermanentError(f"smtp: {text}")  # e.g. STARTTLS or AUTH not offered: fix the config


def refused_error(refused: dict[str, Any]) -> DeliveryError:
    """Some recipients refused: retried only if a refusal was temporary (the rest are recorded).

    ``refused`` maps each address to what the server said: ``SMTPResponse`` or
    ``SMTPRecipientRefused``, both with ``code`` and ``message``.
    """
    codes = [int(reply.code) for reply in refused.values()]
    detail = "; ".join(
        f"{r}: {reply.code} {one_line(reply.message)}" for r, reply in refused.items()
    )
    if any(400 <= c < 500 for c in codes):
        return RetryableError(f"smtp: recipients refused for now: {detail}", status_code=max(codes))
    return PermanentError(f"smtp: recipients refused: {detail}", status_code=max(codes))


@hookimpl
def register_connectors(register: Any) -> None:
    register(EmailConnector)
