"""One delivery-state type: ``relay.store.states.DeliveryState`` is the only spelling of a state
in the code, and what the admin API and the dashboard offer is read from it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from relay.app import create_app
from relay.store.states import ACTIVE, ENDED, DeliveryState
from relay.ui.pages import DELIVERY_STATES, EVENT_STATES
from tests.support.operations import AUTH, admin_settings
from tests.support.relay import run_relay
from tests.support.samples import fixture

ROOT = Path(__file__).resolve().parents[1]
NAMES = {st.value for st in DeliveryState}
QUOTED = re.compile("['\"](" + "|".join(sorted(NAMES)) + ")['\"]")  # inside SQL text

# The one home of the spellings.
HOME = "relay/store/states.py"
# Strings that are spelled like a state without being one, with why.
NOT_DELIVERY_STATES = {
    ("relay/ingest/sqs_consumer.py", "running"): "the SQS consumer's own status",
}


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of docstring constants: prose may name a state."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def literals(path: Path) -> list[tuple[int, str]]:
    """Each string constant that is a state's name, or quotes one inside (SQL)."""
    tree = ast.parse(path.read_text(), str(path))
    prose = docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
            continue
        if id(node) in prose:
            continue
        if node.value in NAMES:
            found.append((node.lineno, node.value))
        elif match := QUOTED.search(node.value):
            found.append((node.lineno, match.group(0)))
    return found


def test_no_delivery_state_is_spelled_out_of_the_enum() -> None:
    offences = []
    for path in sorted((ROOT / "relay").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == HOME:
            continue
        for line, text in literals(path):
            if (rel, text) not in NOT_DELIVERY_STATES:
                offences.append(f"{rel}:{line}: {text}")
    assert offences == [], "use relay.store.states.DeliveryState:\n" + "\n".join(offences)


def test_the_sql_files_spell_states_from_the_enum() -> None:
    """relay/store/sql/*.sql write ``{state:…}``, which the loader spells from the enum."""
    for path in (ROOT / "relay" / "store" / "sql").glob("*.sql"):
        assert not QUOTED.search(path.read_text()), f"{path.name} writes a state by hand"


def test_the_scan_finds_comparisons_sets_and_sql(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""A docstring may say pending."""\n'
        'if state == "dead":\n'
        "    pass\n"
        'ALLOWED = {"pending", "cancelled"}\n'
        "SQL = \"UPDATE deliveries SET state = 'running'\"\n"
        'log.info("delivery %s is dead now", 1)\n'
    )
    assert sorted(literals(sample)) == [
        (2, "dead"),
        (4, "cancelled"),
        (4, "pending"),
        (5, "'running'"),
    ]


def test_active_and_ended_split_the_states() -> None:
    assert set(ACTIVE) | set(ENDED) == set(DeliveryState)
    assert not set(ACTIVE) & set(ENDED)


def test_the_dashboard_filters_offer_every_state() -> None:
    assert list(DeliveryState) == EVENT_STATES
    assert DELIVERY_STATES[0] == DeliveryState.DEAD  # the page opens on the dead letters
    assert set(DELIVERY_STATES) == {*DeliveryState, "all"}


def test_the_api_schema_states_are_the_enum(tmp_path: Path) -> None:
    app = create_app(admin_settings(f"sqlite+aiosqlite:///{tmp_path}/relay.db", {}))
    schema = app.openapi_schema.to_schema()
    component = schema["components"]["schemas"]["DeliveryState"]
    assert component["enum"] == [st.value for st in DeliveryState]
    ref = {"$ref": "#/components/schemas/DeliveryState"}
    filters = {
        "/api/v1/deliveries": "state",
        "/api/v1/events": "status",
    }
    for path, name in filters.items():
        [param] = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == name]
        assert ref in param["schema"]["oneOf"], param
    delivery = schema["components"]["schemas"]["Delivery"]
    assert delivery["properties"]["state"] == ref


async def test_the_api_answers_states_by_their_names(db_url: str) -> None:
    async with run_relay(admin_settings(db_url, {"out": {"type": "log"}})) as relay:
        await relay.post(fixture("call_completed"))
        await relay.settled()
        url = relay.url + "/api/v1/deliveries"
        ok = await relay.client.get(url, params={"state": "succeeded"}, headers=AUTH)
        assert ok.status_code == 200
        assert [d["state"] for d in ok.json()["items"]] == ["succeeded"]
        unknown = await relay.client.get(url, params={"state": "done"}, headers=AUTH)
        assert unknown.status_code == 400
