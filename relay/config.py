"""YAML configuration → typed, validated settings.

Errors always name the key path (``$.connectors.crm.tokn``) because the person reading them is
an admin editing a YAML file, not a Python developer.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import yaml

from relay.routing import RouteError, check_route
from relay.secrets import secret_values
from relay.store.db import is_sqlite

if TYPE_CHECKING:
    from relay.connector import Connector

DEFAULT_PATH = "config.yaml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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


def interpolate(value: Any, env: Mapping[str, str], path: str = "$") -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string; a missing NAME is an error."""
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(path, f"environment variable {name} is not set")

        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`(?: - at `([^`]*)`)?$")
_AT = re.compile(r"^(.*) - at `([^`]*)`$")


def _convert(data: Any, tp: type, path: str) -> Any:
    """msgspec.convert with errors rewritten to carry the full key path."""
    try:
        return msgspec.convert(data, tp, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        if m := _UNKNOWN.match(msg):
            where = path + (m.group(2) or "$")[1:]
            raise ConfigError(f"{where}.{m.group(1)}", "unknown key") from None
        if m := _AT.match(msg):
            raise ConfigError(path + m.group(2)[1:], m.group(1)) from None
        raise ConfigError(path, msg) from None


def parse_config(
    text: str,
    *,
    connector_types: Mapping[str, type[Connector]],
    env: Mapping[str, str] | None = None,
    source: str = "<memory>",
) -> Settings:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("$", f"not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("$", "the top level must be a mapping")
    data = interpolate(data, os.environ if env is None else env)
    top: _Top = _convert(data, _Top, "$")
    if top.server.reuse_port and is_sqlite(top.database.url):
        raise ConfigError(
            "$.server.reuse_port", "needs PostgreSQL: a SQLite store takes one `relay serve`"
        )

    connectors: dict[str, ConnectorInstance] = {}
    for name, block in top.connectors.items():
        connectors[name] = _connector(name, block, top.delivery, connector_types)

    integrations: dict[str, Integration] = {}
    for iid, block in top.integrations.items():
        path = f"$.integrations.{iid}"
        integ: Integration = _convert(block or {}, Integration, path)
        _check_integration(iid, integ, connectors, path)
        integrations[iid] = integ
    _check_alerts(top.alerts, connectors)
    _check_rate_groups(connectors)

    return Settings(
        database=top.database,
        server=top.server,
        admin=top.admin,
        delivery=top.delivery,
        dispatch=top.dispatch,
        plugins=top.plugins,
        logging=top.logging,
        connectors=connectors,
        integrations=integrations,
        retention=top.retention,
        source=source,
        sqs=top.sqs,
        alerts=top.alerts,
    )


def _check_alerts(alerts: AlertsConfig, connectors: Mapping[str, ConnectorInstance]) -> None:
    for i, name in enumerate(alerts.connectors):
        if name not in connectors:
            raise ConfigError(f"$.alerts.connectors[{i}]", f"no connector named {name!r}")
    if alerts.interval <= 0:
        raise ConfigError("$.alerts.interval", "must be a positive duration")
    if alerts.dead_letters < 1:
        raise ConfigError("$.alerts.dead_letters", "must be at least 1")


def _connector(
    name: str,
    block: Any,
    defaults: DeliveryPolicy,
    types: Mapping[str, type[Connector]],
) -> ConnectorInstance:
    path = f"$.connectors.{name}"
    if not isinstance(block, dict):
        raise ConfigError(path, "must be a mapping with at least `type`")
    block = dict(block)
    ctype = block.pop("type", None)
    if not ctype:
        raise ConfigError(f"{path}.type", "missing connector type")
    cls = types.get(ctype)
    if cls is None:
        known = ", ".join(sorted(types)) or "none loaded"
        raise ConfigError(f"{path}.type", f"unknown connector type {ctype!r} (known: {known})")
    policy_block = block.pop("delivery", None) or {}
    merged = msgspec.structs.asdict(defaults) | policy_block
    policy = _convert(merged, DeliveryPolicy, f"{path}.delivery")
    circuit = _convert(block.pop("circuit", None) or {}, CircuitPolicy, f"{path}.circuit")
    group = block.pop("rate_group", None)
    if group is not None and not (isinstance(group, str) and 0 < len(group) <= 100):
        raise ConfigError(f"{path}.rate_group", "must be a name of 1 to 100 characters")
    options = _convert(block, cls.Config, path)
    return ConnectorInstance(
        name=name,
        type=ctype,
        cls=cls,
        policy=policy,
        options=options,
        raw=block,
        circuit=circuit,
        rate_group=group,
    )


def _check_rate_groups(connectors: Mapping[str, ConnectorInstance]) -> None:
    """Connectors sharing buckets must agree on them (a bucket keeps the rate it was first
    asked for): one type, the same limits."""
    first: dict[str, ConnectorInstance] = {}
    for name, inst in connectors.items():
        if inst.rate_group is None:
            continue
        other = first.setdefault(inst.rate_group, inst)
        if _limits(inst) != _limits(other):
            raise ConfigError(
                f"$.connectors.{name}.rate_group",
                f"connector {other.name!r} is in rate group {inst.rate_group!r} with another"
                " type or other limits: the connectors of one account share one limit",
            )


def _limits(inst: ConnectorInstance) -> tuple[Any, ...]:
    options = inst.options
    return (inst.type, *(getattr(options, k, None) for k in ("rate_limit", "search_rate_limit")))


def _check_integration(
    iid: str, integ: Integration, connectors: Mapping[str, ConnectorInstance], path: str
) -> None:
    if integ.transport != "sqs" and integ.sqs is not None:
        raise ConfigError(f"{path}.transport", "has an `sqs` block: set `transport: sqs`")
    if integ.transport == "webhook" and not integ.secret:
        raise ConfigError(f"{path}.secret", "a webhook integration needs its Wildix secret")
    if integ.transport == "sqs" and integ.sqs is None:
        raise ConfigError(f"{path}.sqs", "an sqs integration needs an `sqs` block")
    for i, route in enumerate(integ.routes):
        rpath = f"{path}.routes[{i}]"
        if route.connector not in connectors:
            raise ConfigError(f"{rpath}.connector", f"no connector named {route.connector!r}")
        if not route.events:
            raise ConfigError(f"{rpath}.events", "list at least one event type pattern")
        try:
            check_route(route.events, route.where)
        except RouteError as exc:
            raise ConfigError(f"{rpath}.{exc.path}", exc.message) from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    connector_types: Mapping[str, type[Connector]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Load the config file; the connector types come from the loaded plugins."""
    return load_versioned(path, connector_types=connector_types, env=env)[0]


def load_versioned(
    path: str | os.PathLike[str] | None = None,
    *,
    connector_types: Mapping[str, type[Connector]] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Settings, str]:
    """The settings and their version: a short hash of the file's text, so an admin can tell
    which edit a running process has loaded."""
    env = os.environ if env is None else env
    file = Path(path or env.get("RELAY_CONFIG") or DEFAULT_PATH)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("$", f"cannot read {file}: {exc.strerror}") from None
    if connector_types is None:
        from relay.registry import connector_types as load_types

        connector_types = load_types(_plugin_dirs(text, env))
    settings = parse_config(text, connector_types=connector_types, env=env, source=str(file))
    return settings, hashlib.sha256(text.encode()).hexdigest()[:12]


def _plugin_dirs(text: str, env: Mapping[str, str]) -> list[str]:
    """Plugin folders must be known before connector blocks can be validated."""
    try:
        data = yaml.safe_load(text) or {}
        dirs = (data.get("plugins") or {}).get("dirs") or []
        return [interpolate(d, env, "$.plugins.dirs") for d in dirs]
    except (yaml.YAMLError, AttributeError):
        return []
