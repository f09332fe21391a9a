"""The shared CRM layer: everything a CRM call-logging connector needs, in one place.

First-party connectors (HubSpot, Pipedrive) and third-party CRM plugins use it the same way::

    from relay import crm

    class MyCrm(crm.CrmConnector):
        type = "mycrm"
        Config = MyCrmConfig  # a crm.CrmConfig subclass

See docs/crm.md for the lifecycle and the adapter methods a CRM implements.
"""

from relay.config import Duration
from relay.crm.content import (
    OUTCOME_LABELS,
    Activity,
    clock,
    marker,
    split_name,
    text_to_html,
)
from relay.crm.facts import Facts
from relay.crm.http import CrmHttp, Limited, json_object, next_reset
from relay.crm.lifecycle import ActivityState, CallLink, CrmConnector
from relay.crm.options import (
    DEFAULT_NOTES,
    DEFAULT_TITLE,
    CreateAt,
    CrmConfig,
    OnNoMatch,
    RateLimit,
)
from relay.crm.owners import OwnerMapper
from relay.crm.phones import Person, PhoneMatcher, national_digits, pick, to_e164

__all__ = [
    "DEFAULT_NOTES",
    "DEFAULT_TITLE",
    "OUTCOME_LABELS",
    "Activity",
    "ActivityState",
    "CallLink",
    "CreateAt",
    "CrmConfig",
    "CrmConnector",
    "CrmHttp",
    "Duration",
    "Facts",
    "Limited",
    "OnNoMatch",
    "OwnerMapper",
    "Person",
    "PhoneMatcher",
    "RateLimit",
    "clock",
    "json_object",
    "marker",
    "national_digits",
    "next_reset",
    "pick",
    "split_name",
    "text_to_html",
    "to_e164",
]
