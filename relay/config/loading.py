"""Reading config.yaml: environment variables interpolated, every section converted and the
cross-references checked (routes name connectors, alerts name connectors, rate groups agree),
each error naming its key path."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import yaml

from relay.config.schema import (
    DEFAULT_PATH,
    AlertsConfig,
    CircuitPolicy,
    ConfigError,
    ConnectorInstance,
    DeliveryPolicy,
    Integration,
    Settings,
    _dec_hook,
    _Top,
)
from relay.routing import RouteError, check_route
from relay.store.db import is_sqlite

if TYPE_CHECKING:
    from relay.connector import Connector

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
