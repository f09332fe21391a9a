"""relay: Wildix events in, verified and stored, fanned out to connectors.

Everything a plugin author needs is importable from here; first-party connectors use nothing else.
"""

from relay import crm  # the shared CRM layer (docs/crm.md)
from relay.connector import Connector, ConnectorConfig, ConnectorContext, DeliveryContext
from relay.crm import oauth as _crm_oauth  # noqa: F401  (crm.oauth: OAuth CRM connectors)
from relay.errors import (
    AuthError,
    DeliveryError,
    PauseConnector,
    PermanentError,
    RetryableError,
    parse_retry_after,
    raise_for_response,
)
from relay.hookspecs import hookimpl
from relay.messages import (
    MESSAGE_KINDS,
    TemplateFile,
    check_template,
    message_kind,
    once_key,
    party_label,
    post_once,
    render_checked,
    sample_events,
    template_source,
    template_values,
)
from relay.templates import TemplateError, add_filter, compile_template, render, to_datetime
from relay.wildix import Call, Event, Leg, Party, Presence, Recording, Sms

__all__ = [
    "MESSAGE_KINDS",
    "AuthError",
    "Call",
    "Connector",
    "ConnectorConfig",
    "ConnectorContext",
    "DeliveryContext",
    "DeliveryError",
    "Event",
    "Leg",
    "Party",
    "PauseConnector",
    "PermanentError",
    "Presence",
    "Recording",
    "RetryableError",
    "Sms",
    "TemplateError",
    "TemplateFile",
    "add_filter",
    "check_template",
    "compile_template",
    "crm",
    "hookimpl",
    "message_kind",
    "once_key",
    "parse_retry_after",
    "party_label",
    "post_once",
    "raise_for_response",
    "render",
    "render_checked",
    "sample_events",
    "template_source",
    "template_values",
    "to_datetime",
]
