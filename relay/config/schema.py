"""What config.yaml holds: the typed settings, each section a struct with its defaults and checks.

Errors always name the key path (``$.connectors.crm.tokn``) because the person reading them is
an admin editing a YAML file, not a Python developer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from relay.secrets import secret_values

if TYPE_CHECKING:
    pass

DEFAULT_PATH = "config.yaml"


class ConfigError(Exception):
    """A configuration problem, located by its key path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    pass


class Duration(float):
    """Seconds, written in YAML as ``5s``, ``2m``, ``1h``, ``250ms`` or a number."""


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any) -> float:
    """``"2m"`` → 120.0; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 5s, 2m, 1h, 1d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _dec_hook(tp: type, value: Any) -> Any:
    if tp is Duration:
        return Duration(parse_duration(value))
    raise NotImplementedError


class DatabaseConfig(_Strict):
    url: str = "sqlite+aiosqlite:///./relay.db"
    pool_size: int = 10
    echo: bool = False
    # SQLite only: `full` syncs every commit, so an acknowledged event survives a power cut;
    # `normal` risks losing the last acknowledged events to one (docs/configuration.md).
    sqlite_sync: Annotated[str, msgspec.Meta(pattern="^(full|normal)$")] = "full"


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_size: int = 1024 * 1024
    trusted_proxies: list[str] = []
    # Bounds on what a client holds: relay faces the internet (relay/cli/http_limits.py).
    max_connections: int = 1000
    keep_alive_timeout: Duration = Duration(5)
    header_timeout: Duration = Duration(10)
    body_timeout: Duration = Duration(30)
    max_header_size: int = 16 * 1024
    # several `relay serve` processes on one port, the kernel spreading connections (PostgreSQL)
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.max_header_size < 1024:
            raise ValueError("max_header_size must be at least 1024 bytes")
        for name in ("keep_alive_timeout", "header_timeout", "body_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be more than 0")


class AdminConfig(_Strict):
    token: str = ""
    # /metrics asks for the admin token too unless this is set (a scraper on a private network).
    public_metrics: bool = False
    # Dashboard cookies are HTTPS-only; set false only to use the dashboard over plain HTTP
    # from another machine (loopback counts as secure for browsers).
    secure_cookies: bool = True
    session_lifetime: Duration = Duration(12 * 3600)

    def __post_init__(self) -> None:
        if self.token and len(self.token) < 16:
            raise ValueError(
                "token must be at least 16 characters (make one: openssl rand -hex 32)"
            )


class DeliveryPolicy(_Strict):
    max_attempts: int = 10
    schedule: list[Duration] = msgspec.field(
        default_factory=lambda: [
            Duration(s) for s in (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800)
        ]
    )
    timeout: Duration = Duration(15)
    concurrency: int = 8
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not self.schedule:
            raise ValueError("schedule must list at least one delay")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


class CircuitPolicy(_Strict):
    """A connector's circuit breaker: after ``failures`` consecutive failures that blame the
    target, its deliveries wait (no attempt spent) and one probe goes every cool-down."""

    failures: int = 5  # 0 turns the breaker off for this connector
    cool_down: Duration = Duration(30)
    max: Duration = Duration(600)

    def __post_init__(self) -> None:
        if self.failures < 0:
            raise ValueError("failures must be 0 (off) or more")
        if self.cool_down <= 0:
            raise ValueError("cool_down must be more than 0")
        if self.max < self.cool_down:
            raise ValueError("max must be at least cool_down")


class DispatchConfig(_Strict):
    poll_interval: Duration = Duration(1)
    # A claim lasts the delivery timeout plus this margin; a crashed worker's claims are taken
    # over once it has passed.
    lease: Duration = Duration(30)
    shutdown_grace: Duration = Duration(10)


class PluginsConfig(_Strict):
    dirs: list[str] = []


class LoggingConfig(_Strict):
    level: str = "INFO"
    format: Literal["json", "text"] = "json"
    show_numbers: bool = False  # phone numbers in log lines are masked unless this is true


class RetentionConfig(_Strict):
    """How long stored data is kept; integrations may set their own ``retention``."""

    events: Duration | None = None  # None keeps events forever
    rejections: Duration | None = Duration(30 * 86400)
    incidents: Duration | None = Duration(90 * 86400)  # resolved ones, and circuit history
    interval: Duration = Duration(3600)


class AlertsConfig(_Strict):
    """Incidents relay opens about itself (relay.admin.watcher), and who hears of them: one
    message per incident when it opens and one when it resolves, through the normal queue."""

    connectors: list[str] = []  # the connectors every incident goes to
    interval: Duration = Duration(5)  # how often each process looks at the conditions
    dead_letters: int = 1  # dead deliveries of one connector that open an incident


class Route(_Strict):
    connector: str
    events: list[str] = msgspec.field(default_factory=lambda: ["*"])
    where: dict[str, Any] | None = None


class SqsConfig(_Strict):
    queue_url: str
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    signing_secret: str | None = None
    endpoint_url: str | None = None
    wait_time: int = 20
    visibility_timeout: int = 60
    max_messages: int = 10
    on_invalid: Literal["delete", "keep"] = "delete"

    def __post_init__(self) -> None:
        if urlsplit(self.queue_url).scheme not in ("http", "https"):
            raise ValueError("queue_url must be the queue's https:// URL")
        if not 0 <= self.wait_time <= 20:
            raise ValueError("wait_time must be 0..20 seconds (the SQS long-polling limit)")
        if not 1 <= self.max_messages <= 10:
            raise ValueError("max_messages must be 1..10 (the SQS batch limit)")
        if not 1 <= self.visibility_timeout <= 43200:
            raise ValueError("visibility_timeout must be 1..43200 seconds")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError(
                "set both access_key_id and secret_access_key, or neither to use the AWS "
                "environment/profile credential chain"
            )
        if not self.verify_secret:
            # Credentials from the AWS chain are never the key Wildix signed with.
            raise ValueError(
                "nothing to verify X-SIGNATURE with: set secret_access_key (the key entered in "
                "WMS, which Wildix signs with) or signing_secret"
            )

    @property
    def verify_secret(self) -> str:
        """Wildix signs SQS messages with the AWS secret key it was given in WMS."""
        return self.signing_secret or self.secret_access_key or ""


class SqsProcessConfig(_Strict):
    """Which process polls the SQS queues (several may: SQS and dedupe make that safe)."""

    consume_in: Literal["serve", "worker", "both"] = "serve"


class Integration(_Strict):
    name: str | None = None
    transport: Literal["webhook", "sqs"] = "webhook"
    secret: str | None = None
    sqs: SqsConfig | None = None
    routes: list[Route] = []
    retention: Duration | None = None  # default: retention.events


class ConnectorInstance(msgspec.Struct, kw_only=True):
    """A named connector block: its type, delivery policy and the type's own validated Config."""

    name: str
    type: str
    cls: Any
    policy: DeliveryPolicy
    options: Any
    raw: dict[str, Any]
    circuit: CircuitPolicy = CircuitPolicy()
    # whose token buckets the connector takes from: its own name, or a group of connectors on
    # one account (a CRM's limit is per account, not per connector block)
    rate_group: str | None = None


class _Top(_Strict):
    database: DatabaseConfig = DatabaseConfig()
    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    delivery: DeliveryPolicy = DeliveryPolicy()
    dispatch: DispatchConfig = DispatchConfig()
    plugins: PluginsConfig = PluginsConfig()
    logging: LoggingConfig = LoggingConfig()
    retention: RetentionConfig = RetentionConfig()
    sqs: SqsProcessConfig = SqsProcessConfig()
    alerts: AlertsConfig = AlertsConfig()
    connectors: dict[str, dict[str, Any]] = {}
    integrations: dict[str, dict[str, Any]] = {}


class Settings(msgspec.Struct, kw_only=True):
    database: DatabaseConfig
    server: ServerConfig
    admin: AdminConfig
    delivery: DeliveryPolicy
    dispatch: DispatchConfig
    plugins: PluginsConfig
    logging: LoggingConfig
    connectors: dict[str, ConnectorInstance]
    integrations: dict[str, Integration]
    retention: RetentionConfig = RetentionConfig()
    source: str = "<memory>"
    sqs: SqsProcessConfig = SqsProcessConfig()
    alerts: AlertsConfig = AlertsConfig()

    def secret_values(self) -> list[str]:
        """Every configured secret, for the redactor of logs, stored errors, API and CLI output:
        a target's error body, a URL or a traceback can echo any of them."""
        found = [self.admin.token, *secret_values(self.database.url)]
        for integ in self.integrations.values():
            found.append(integ.secret or "")
            if integ.sqs:
                found += [integ.sqs.secret_access_key or "", integ.sqs.signing_secret or ""]
                found += secret_values(integ.sqs.queue_url)
        for inst in self.connectors.values():
            found += secret_values(inst.raw)
        return [x for x in found if x]
