"""The YAML options every CRM connector shares, so admins learn them once.

A CRM plugin subclasses ``CrmConfig`` and adds its own keys (credentials, ``base_url``); it may
override a default (``rate_limit``) by redeclaring the field.
"""

from __future__ import annotations

from datetime import time
from typing import ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import phonenumbers

from relay.config import Duration
from relay.connector import ConnectorConfig
from relay.templates import TemplateError, compile_template

OnNoMatch = Literal["log_unlinked", "create_contact", "skip"]
# When a call's CRM record is created: at its first routed event, once it has ended, or from its
# final data (the current generation's ``call:completed``, the legacy end). Later is fewer writes.
CreateAt = Literal["start", "end", "record"]
CREATE_POINTS: tuple[CreateAt, ...] = ("start", "end", "record")

DEFAULT_TITLE = (
    "{% if call.direction == 'inbound' %}"
    "{{ 'Missed call' if outcome == 'missed' else 'Inbound call' }} from {{ remote }}"
    "{% elif call.direction == 'outbound' %}Outbound call to {{ remote }}"
    "{% else %}Internal call {{ local }} → {{ call.destination or remote }}{% endif %}"
)

DEFAULT_NOTES = """\
{{ call.direction | capitalize }} call, {{ outcome_label }}.
Who: {{ local }}{% if call.local and call.local.extension %} (ext. {{ call.local.extension }})\
{% endif %} with {{ remote }}
When: {{ started }}{% if duration %}, {{ duration }}{% endif %}\
{% if talk_time %} (talk {{ talk_time }}){% endif %}
{% if call.queue %}Queue: {{ call.queue }}
{% endif %}{% if call.trunk %}Trunk: {{ call.trunk }}
{% endif %}{% if call.end_cause_text or call.end_cause %}End cause: \
{{ call.end_cause_text or call.end_cause }}
{% endif %}{% if call.tags %}Tags: {{ call.tags | join(', ') }}
{% endif %}{% for url in recordings %}Recording: {{ url }}
{% endfor %}"""


class RateLimit(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """At most ``requests`` per ``per`` seconds: a token bucket per connector (or ``rate_group``),
    in the database for the whole cluster on PostgreSQL, in memory on SQLite."""

    requests: int
    per: Duration = Duration(1)

    def __post_init__(self) -> None:
        if self.requests < 1 or self.per <= 0:
            raise ValueError("rate limits need requests >= 1 and a positive `per`")


class CrmConfig(ConnectorConfig):
    """Options of the shared CRM layer: which calls, matching, owners, content, limits."""

    # The earliest ``create_at`` the CRM can take: "end" where a field is fixed at creation and
    # needs the outcome (Zoho's Call_Type), or where the outcome decides whether there is a
    # record at all (tickets for missed calls).
    earliest_create_at: ClassVar[CreateAt] = "start"

    base_url: str | None = None  # the CRM's API root; each CRM sets its vendor default
    default_region: str | None = None  # ISO country for national numbers, e.g. GB
    log_internal: bool = False
    per_leg: bool = False
    on_no_match: OnNoMatch = "log_unlinked"
    match_cache_ttl: Duration = Duration(600)
    owners: dict[str, str | int] = {}  # Wildix email or extension → CRM user id
    owner_lookup: bool = True  # look the Wildix user's email up among the CRM's users
    default_owner: str | int | None = None
    title: str = DEFAULT_TITLE
    notes: str = DEFAULT_NOTES
    recording_url: str | None = None  # Jinja: a link for recordings Wildix sent no URL for
    # "end": the record appears when the call ends, with its outcome, and is updated once, by
    # the final record; "start" adds a write per live change (bench/README.md has the cost)
    create_at: CreateAt = "end"
    wait_for_record: bool = True  # false: the older spelling of `create_at: end` (Pipedrive)
    rate_limit: RateLimit = RateLimit(requests=10, per=Duration(1))
    search_rate_limit: RateLimit = RateLimit(requests=5, per=Duration(1))
    daily_reset: str = "00:00"  # when the CRM's daily quota resets ...
    timezone: str = "UTC"  # ... in this time zone (the CRM account's)
    request_timeout: Duration = Duration(10)
    index_lag: Duration = Duration(0)  # how long a new record may stay invisible to search

    def __post_init__(self) -> None:
        if self.base_url is not None:
            if not self.base_url.startswith(("http://", "https://")):
                raise ValueError("`base_url` must start with http:// or https://")
            self.base_url = self.base_url.rstrip("/")
        if self.default_region is not None:
            self.default_region = self.default_region.upper()
            if self.default_region not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"`default_region` {self.default_region!r} is not a country code")
        for key in ("title", "notes", "recording_url"):
            source = getattr(self, key)
            if source is None:
                continue
            try:
                compile_template(source)
            except TemplateError as exc:
                raise ValueError(f"`{key}`: {exc}") from None
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"`timezone` {self.timezone!r} is not a known time zone") from None
        try:
            time.fromisoformat(self.daily_reset)
        except ValueError:
            raise ValueError("`daily_reset` must be a time of day like 00:00") from None
        if self.request_timeout <= 0:
            raise ValueError("`request_timeout` must be positive")
        if self.create_at == "record" and not self.wait_for_record:
            self.create_at = "end"
        earliest = CREATE_POINTS.index(self.earliest_create_at)
        if CREATE_POINTS.index(self.create_at) < earliest:
            later = " or ".join(CREATE_POINTS[earliest:])
            raise ValueError(
                f"`create_at: {self.create_at}`: this CRM needs the call's outcome to create its"
                f" record; use {later}"
            )
