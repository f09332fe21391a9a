"""The rules of the Dataverse fake's phone calls: the columns, their types and lengths, the
``@odata.bind`` lookups and activity parties a create or update may carry, each checked against
the records the fake holds and refused with Dataverse's OData error, as the service does."""

from __future__ import annotations

import re
from typing import Any

from litestar import Response

from tests.fakes.dynamics_query import error

Tables = dict[str, dict[str, dict[str, Any]]]
GUID = r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}"
BIND = re.compile(rf"/(contacts|leads|systemusers)\(({GUID})\)")
TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})")
LENGTHS = {"subject": 200, "description": 2000, "phonenumber": 200, "category": 250}
PHONECALL = {
    *LENGTHS,
    "directioncode",
    "actualstart",
    "actualend",
    "actualdurationminutes",
    "subcategory",
    "regardingobjectid_contact@odata.bind",
    "regardingobjectid_lead@odata.bind",
    "ownerid@odata.bind",
    "phonecall_activity_parties",
}
PARTY_BINDS = {
    "partyid_contact@odata.bind": "contacts",
    "partyid_lead@odata.bind": "leads",
    "partyid_systemuser@odata.bind": "systemusers",
}
ENTITY = {
    "contacts": "contact",
    "leads": "lead",
    "systemusers": "systemuser",
    "phonecalls": "phonecall",
}
NOT_ON_TYPE = "0x80060888"  # Dataverse's code for an unknown property or malformed query
DOES_NOT_EXIST = "0x80040217"
INVALID_ARGUMENT = "0x80040203"
# the phonecall's state model (entity reference): statuscode → its statecode, and each
# statecode's default status. Open 0 (Open 1), Completed 1 (Made 2, Received 4), Canceled 2 (3).
STATUS_STATE = {1: 0, 2: 1, 3: 2, 4: 1}
DEFAULT_STATUS = {0: 1, 1: 2, 2: 3}
STATE_NAMES = {0: "Open", 1: "Completed", 2: "Canceled"}


def _bind(value: Any, tables: tuple[str, ...], records: Tables) -> Response[Any] | None:
    match = BIND.fullmatch(str(value))
    if match is None or match[1] not in tables:
        return error(400, NOT_ON_TYPE, f"Bad Request - Error in query syntax: {value!r}")
    if match[2] not in records[match[1]]:
        return error(404, DOES_NOT_EXIST, f"{ENTITY[match[1]]} With Id = {match[2]} Does Not Exist")
    return None


def _bad_state(body: dict[str, Any], current: dict[str, Any] | None) -> Response[Any] | None:
    """``statecode`` is not valid for create; a ``statuscode`` must belong to the state set."""
    if current is None and "statecode" in body:
        return error(
            400,
            INVALID_ARGUMENT,
            "The 'statecode' attribute is not valid for create: create the phone call, then "
            "update its statecode and statuscode.",
        )
    state = body.get("statecode", (current or {}).get("statecode", 0))
    status = body.get("statuscode", DEFAULT_STATUS.get(state))
    if state not in STATE_NAMES or STATUS_STATE.get(status) != state:
        return error(
            400,
            INVALID_ARGUMENT,
            f"{status} is not a valid status code for state code "
            f"PhoneCallState.{STATE_NAMES.get(state, state)} on phonecall.",
        )
    return None


def bad_phonecall(
    body: Any, records: Tables, current: dict[str, Any] | None = None
) -> Response[Any] | None:
    """The error Dataverse answers a phone call create (``current`` None) or an update of
    ``current`` with, or None if it is good."""
    if not isinstance(body, dict):
        return error(400, NOT_ON_TYPE, "The request body is not a JSON object.")
    for name, value in body.items():
        if name not in PHONECALL | {"statecode", "statuscode"}:
            return error(
                400,
                NOT_ON_TYPE,
                f"The property '{name}' does not exist on type "
                "'Microsoft.Dynamics.CRM.phonecall'. Make sure to only use property names "
                "that are defined by the type.",
            )
        if name in LENGTHS and (not isinstance(value, str) or len(value) > LENGTHS[name]):
            return error(
                400,
                "0x80044331",
                f"A validation error occurred. The length of the '{name}' attribute of the "
                f"'phonecall' entity exceeded the maximum allowed length of '{LENGTHS[name]}'.",
            )
    if "directioncode" in body and not isinstance(body["directioncode"], bool):
        return error(
            400, NOT_ON_TYPE, "Cannot convert the literal to the expected type 'Edm.Boolean'."
        )
    minutes = body.get("actualdurationminutes", 0)
    if not isinstance(minutes, int) or isinstance(minutes, bool) or minutes < 0:
        return error(
            400, NOT_ON_TYPE, "Cannot convert the literal to the expected type 'Edm.Int32'."
        )
    for name in ("actualstart", "actualend"):
        if name in body and not TIME.fullmatch(str(body[name])):
            return error(
                400,
                NOT_ON_TYPE,
                "Cannot convert the literal to the expected type 'Edm.DateTimeOffset'.",
            )
    for name, tables in (
        ("regardingobjectid_contact@odata.bind", ("contacts",)),
        ("regardingobjectid_lead@odata.bind", ("leads",)),
        ("ownerid@odata.bind", ("systemusers",)),
    ):
        if name in body and (bad := _bind(body[name], tables, records)) is not None:
            return bad
    parties = body.get("phonecall_activity_parties", [])
    if not isinstance(parties, list):
        return error(400, NOT_ON_TYPE, "phonecall_activity_parties must be a collection.")
    for party in parties:
        binds = [k for k in party if k in PARTY_BINDS] if isinstance(party, dict) else []
        if len(binds) != 1 or set(party) != {binds[0], "participationtypemask"}:
            return error(400, NOT_ON_TYPE, f"An activity party is malformed: {party!r}")
        if party["participationtypemask"] not in (1, 2):  # a phone call: From or To
            return error(
                400, "0x80040203", "Invalid participation type mask for a phone call party."
            )
        if (bad := _bind(party[binds[0]], (PARTY_BINDS[binds[0]],), records)) is not None:
            return bad
    return _bad_state(body, current)
