"""The documentation covers the code: every config key, connector option and CLI option.

The way datasette checks its hook and CLI docs: the lists come from the code (the config
structs, the connectors' ``Config`` structs, the click group), so a key or an option added
without its documentation fails here, with a message naming it; and so does a key or an option
that the docs still write after the code dropped or renamed it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import msgspec
import pytest

from relay import crm
from relay.cli import main
from relay.config import CircuitPolicy, ConnectorInstance, Settings
from relay.connector import Connector
from relay.registry import connector_types

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.M)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)


# -- reading the docs ------------------------------------------------------------------------


KEY_TABLE = re.compile(r"^\| key \| default \|")


@dataclass(frozen=True)
class Section:
    heading: str
    body: str  # up to the next heading: a subsection is a section of its own

    @property
    def names(self) -> list[str]:
        """What the heading is about: its code spans (`` `database` ``), or its plain text."""
        return CODE_SPAN.findall(self.heading) or [self.heading]

    def table_keys(self) -> set[str]:
        """The keys in the section's `| key | default | |` tables (`` `a`, `b` `` names two)."""
        keys: set[str] = set()
        in_table = False
        for line in self.body.splitlines():
            if not line.startswith("|"):
                in_table = False
            elif KEY_TABLE.match(line):
                in_table = True
            elif in_table:
                keys.update(CODE_SPAN.findall(line.split("|")[1]))
        return keys


def sections(path: Path) -> list[Section]:
    text = path.read_text(encoding="utf-8")
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # no headings in code
    found = list(HEADING.finditer(text))
    ends = [m.start() for m in found[1:]] + [len(text)]
    return [Section(m.group(1), text[m.end() : end]) for m, end in zip(found, ends, strict=True)]


def section(path: Path, name: str) -> Section | None:
    return next((s for s in sections(path) if name in s.names), None)


def plain(path: str) -> str:
    """`integrations.<id>.routes[]` → `integrations.routes`: how doc headings and key paths meet."""
    return ".".join(p for p in path.replace("[]", "").split(".") if not p.startswith("<"))


# -- configuration keys ----------------------------------------------------------------------


# Settings fields that are not keys of config.yaml: where the file was read from.
NOT_KEYS = {"source"}
# What a connector block holds besides its type's own keys (those are checked per type below).
CONNECTOR_BLOCK_KEYS = ("type", "delivery", "circuit", "rate_group")


def struct_of(info: msgspec.inspect.Type) -> msgspec.inspect.StructType | None:
    """The struct a field holds, directly, optionally, or as the values of a list or mapping."""
    if isinstance(info, msgspec.inspect.UnionType):
        structs = [s for t in info.types if (s := struct_of(t)) is not None]
        return structs[0] if structs else None
    if isinstance(info, msgspec.inspect.StructType):
        return info
    return None


def config_keys(
    struct: msgspec.inspect.StructType, prefix: str = ""
) -> Iterator[tuple[str, str, str]]:
    """(section path, key, full key path) for every key config.yaml can hold."""
    for field in struct.fields:
        if field.name in NOT_KEYS:
            continue
        path = f"{prefix}{field.encode_name}"
        info, suffix = field.type, ""
        if isinstance(info, msgspec.inspect.DictType):
            info, suffix = info.value_type, ".<id>"
        elif isinstance(info, msgspec.inspect.ListType):
            info, suffix = info.item_type, "[]"
        if prefix:  # top-level keys are the sections themselves
            yield prefix.rstrip("."), field.encode_name, path
        inner = struct_of(info)
        if inner is None:
            if not prefix:
                yield path, "", path
        elif inner.cls is ConnectorInstance:
            for key in CONNECTOR_BLOCK_KEYS:
                yield f"{path}{suffix}", key, f"{path}{suffix}.{key}"
            circuit = msgspec.inspect.type_info(CircuitPolicy)
            yield from config_keys(circuit, f"{path}{suffix}.circuit.")
        else:
            yield from config_keys(inner, f"{path}{suffix}.")


CONFIG_KEYS = sorted(config_keys(msgspec.inspect.type_info(Settings)))


def test_the_config_walk_finds_nested_keys() -> None:
    paths = {path for _, _, path in CONFIG_KEYS}
    assert {"database.url", "integrations.<id>.sqs.queue_url", "connectors.<id>.type"} <= paths
    assert "integrations.<id>.routes[].where" in paths


@pytest.mark.parametrize(
    ("where", "key"), [(w, k) for w, k, _ in CONFIG_KEYS], ids=[p for *_, p in CONFIG_KEYS]
)
def test_config_key_is_documented(where: str, key: str) -> None:
    doc = DOCS / "configuration.md"
    found = next((s for s in sections(doc) if plain(where) in map(plain, s.names)), None)
    assert found is not None, f"docs/configuration.md has no section headed `{where}`"
    if key:
        assert key in found.table_keys(), (
            f"docs/configuration.md: `{where}.{key}` has no row in the `{where}` table"
        )


# -- connector options ------------------------------------------------------------------------


def first_party_types() -> dict[str, type[Connector]]:
    """The installed connector types that relay itself ships (relay.plugins.<name>)."""
    return {
        ctype: cls
        for ctype, cls in connector_types().items()
        if cls.__module__.startswith("relay.plugins.")
    }


def own_fields(config: type[msgspec.Struct], base: type[msgspec.Struct] | None) -> list[str]:
    """Keys a connector type adds (a CRM's redeclared shared key is documented with it too)."""
    shared = set(base.__struct_fields__) if base else set()
    hints = config.__annotations__  # declared in the class body itself, not inherited
    return [
        f.encode_name
        for f in msgspec.structs.fields(config)
        if f.name not in shared or f.name in hints
    ]


SHARED_CRM_KEYS = "Keys every CRM connector has"  # the heading of CrmConfig's table in crm.md


def connector_options() -> Iterator[tuple[str, str, str]]:
    """(doc, connector type, key) for every option of every first-party connector."""
    for ctype, cls in sorted(first_party_types().items()):
        is_crm = issubclass(cls.Config, crm.CrmConfig)
        doc = "crm.md" if is_crm else "connectors.md"
        for key in own_fields(cls.Config, crm.CrmConfig if is_crm else None):
            yield doc, ctype, key
    for key in msgspec.structs.fields(crm.CrmConfig):
        yield "crm.md", SHARED_CRM_KEYS, key.encode_name


CONNECTOR_OPTIONS = list(connector_options())


def test_every_first_party_connector_has_options_to_check() -> None:
    types = {ctype for _, ctype, _ in CONNECTOR_OPTIONS}
    assert {"webhook", "log", "file", "slack", "email", "hubspot", "zoho"} <= types


@pytest.mark.parametrize(
    ("doc", "where", "key"),
    CONNECTOR_OPTIONS,
    ids=[f"{d}:{w}.{k}" for d, w, k in CONNECTOR_OPTIONS],
)
def test_connector_option_is_documented(doc: str, where: str, key: str) -> None:
    found = section(DOCS / doc, where)
    assert found is not None, f"docs/{doc} has no section headed `{where}`"
    assert key in found.table_keys(), f"docs/{doc}: `{key}` has no row in the `{where}` table"


# -- and no documented key that the code does not have -------------------------------------


def known_keys() -> dict[tuple[str, str], set[str]]:
    """(doc, section name) → the keys a `| key | default |` table there may list."""
    known: dict[tuple[str, str], set[str]] = {}
    for where, key, _ in CONFIG_KEYS:
        known.setdefault(("configuration.md", plain(where)), set()).add(key)
    for ctype, cls in first_party_types().items():
        doc = "crm.md" if issubclass(cls.Config, crm.CrmConfig) else "connectors.md"
        known[(doc, ctype)] = {f.encode_name for f in msgspec.structs.fields(cls.Config)}
    known[("crm.md", SHARED_CRM_KEYS)] = {
        f.encode_name for f in msgspec.structs.fields(crm.CrmConfig)
    }
    return known


KNOWN_KEYS = known_keys()
DOCUMENTED_KEYS = [
    (doc, s.heading, key)
    for doc in ("configuration.md", "connectors.md", "crm.md")
    for s in sections(DOCS / doc)
    for key in sorted(s.table_keys())
]


@pytest.mark.parametrize(
    ("doc", "heading", "key"),
    DOCUMENTED_KEYS,
    ids=[f"{d}:{h.replace('`', '')}:{k}" for d, h, k in DOCUMENTED_KEYS],
)
def test_documented_key_exists(doc: str, heading: str, key: str) -> None:
    names = Section(heading, "").names
    if doc == "configuration.md":
        names = [plain(n) for n in names]
    tables = [KNOWN_KEYS[(doc, n)] for n in names if (doc, n) in KNOWN_KEYS]
    assert tables, f"docs/{doc}: a key table under '{heading}', which names no config section"
    assert key in set().union(*tables), (
        f"docs/{doc} documents `{key}` under '{heading}', but the code has no such key"
    )


# -- CLI commands and options -----------------------------------------------------------------


def commands(group: click.Command, path: str = "relay") -> Iterator[tuple[str, click.Command]]:
    """relay's own commands, recursively; those plugins add are documented by the plugins."""
    yield path, group
    if isinstance(group, click.Group):
        for name, command in sorted(group.commands.items()):
            module = getattr(command.callback, "__module__", "") or ""
            if module.startswith("relay.") and not module.startswith("relay.plugins."):
                yield from commands(command, f"{path} {name}")


def snippets() -> list[str]:
    """Where the docs write commands: code spans, and the lines of code blocks (less comments)."""
    texts: list[str] = []
    for doc in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        texts += CODE_SPAN.findall(FENCE.sub("", text))
        texts += [
            line.split(" #")[0] for block in FENCE.findall(text) for line in block.splitlines()
        ]
    return texts


SNIPPETS = snippets()


def usages(path: str) -> list[str]:
    """What follows `relay <command>` in the docs."""
    found = re.compile(rf"(?<![\w.-]){re.escape(path)}(?![\w-])(.*)$")
    rests = [m.group(1) for t in SNIPPETS if (m := found.search(t))]
    if " " not in path:  # the group's own options come before the command: `relay --config …`
        rests = [r for r in rests if r.startswith(" -")]
    return rests


COMMANDS = list(commands(main))
OPTIONS = [
    (path, flag)
    for path, command in COMMANDS
    for param in command.params
    if isinstance(param, click.Option) and param.name != "config_after"  # `relay --config`'s twin
    for flag in param.opts + param.secondary_opts
    if flag.startswith("--")
]


def test_the_cli_walk_finds_subcommands_and_options() -> None:
    assert {"relay serve", "relay events list", "relay deliveries retry"} <= dict(COMMANDS).keys()
    assert ("relay serve", "--no-sqs") in OPTIONS and ("relay", "--config") in OPTIONS


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS])
def test_cli_command_is_documented(path: str) -> None:
    assert usages(path), f"no `{path} …` in README.md or docs/*.md"


@pytest.mark.parametrize(("path", "flag"), OPTIONS, ids=[f"{p} {f}" for p, f in OPTIONS])
def test_cli_option_is_documented(path: str, flag: str) -> None:
    written = {f for usage in usages(path) for f in re.findall(r"--[\w-]+", usage)}
    assert flag in written, f"`{path} {flag}` appears in no `{path} …` in README.md or docs/*.md"


def written_flags() -> Iterator[tuple[str, str]]:
    """(command path, flag) for every option written after a `relay …` command in the docs."""
    for text in SNIPPETS:
        for m in re.finditer(r"(?<![\w.-])relay( .*)$", text):
            yield from command_flags(m.group(1).split())


def takes_value(command: click.Command) -> set[str]:
    return {
        f for p in command.params if isinstance(p, click.Option) and not p.is_flag for f in p.opts
    }


def command_flags(tokens: list[str]) -> Iterator[tuple[str, str]]:
    """Read `[--config PATH] command [subcommand] [arguments and --options]` like click would."""
    known = dict(COMMANDS)
    path, descending, skip = "relay", True, False
    for token in tokens:
        if skip:  # the value of the option before it
            skip = False
        elif re.match(r"^[\[(]*--", token):
            flags = set(re.findall(r"--[\w-]+", token))
            if path == "relay" and not flags <= takes_value(known[path]):
                return  # `createuser relay --pwprompt`: another program's argument
            yield from ((path, flag) for flag in sorted(flags))
            skip = bool(flags & takes_value(known[path])) and not token.endswith("]")
        elif descending and f"{path} {token}" in known:
            path = f"{path} {token}"
        elif path == "relay":
            return  # prose, or a command that a plugin adds
        else:
            descending = False  # an argument: what follows belongs to this command


WRITTEN_FLAGS = sorted(set(written_flags()))


@pytest.mark.parametrize(
    ("path", "flag"), WRITTEN_FLAGS, ids=[f"{p} {f}" for p, f in WRITTEN_FLAGS]
)
def test_documented_cli_option_exists(path: str, flag: str) -> None:
    assert (path, flag) in OPTIONS or flag in ("--help", "--config"), (
        f"the docs write `{path} {flag}`, but `{path}` has no such option"
    )
