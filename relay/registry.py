"""Plugin loading: the ``relay`` entry-point group, plus single-file plugins from folders."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Iterable
from pathlib import Path

import pluggy

from relay import hookspecs
from relay.connector import Connector


class PluginError(RuntimeError):
    pass


def plugin_manager(dirs: Iterable[str | Path] = ()) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("relay")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints("relay")
    for folder in dirs:
        for path in sorted(Path(folder).expanduser().glob("*.py")):
            pm.register(_import_file(path), name=f"file:{path}")
    return pm


def _import_file(path: Path) -> object:
    name = f"relay_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot load plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise PluginError(f"plugin file {path} failed to import: {exc}") from exc
    return module


def collect_connectors(pm: pluggy.PluginManager) -> dict[str, type[Connector]]:
    found: dict[str, type[Connector]] = {}

    def register(cls: type[Connector]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Connector)):
            raise PluginError(f"{cls!r} is not a relay.Connector subclass")
        ctype = getattr(cls, "type", None)
        if not ctype:
            raise PluginError(f"{cls.__qualname__} has no `type` name")
        for method in ("deliver", "start", "close", "check"):
            if not inspect.iscoroutinefunction(getattr(cls, method)):
                # a plain `def deliver` would run its side effect, then fail when awaited and be
                # retried: the side effect would repeat up to max_attempts times
                raise PluginError(
                    f"{cls.__module__}.{cls.__qualname__}.{method} must be `async def`"
                )
        if ctype in found and found[ctype] is not cls:
            raise PluginError(
                f"connector type {ctype!r} registered twice "
                f"({found[ctype].__module__} and {cls.__module__})"
            )
        found[ctype] = cls

    pm.hook.register_connectors(register=register)
    return found


def connector_types(dirs: Iterable[str | Path] = ()) -> dict[str, type[Connector]]:
    return collect_connectors(plugin_manager(dirs))


def describe(pm: pluggy.PluginManager) -> list[tuple[str, list[str]]]:
    """(plugin name, hooks it implements) for ``relay plugins``."""
    rows = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        if name.startswith("relay.hookspecs"):
            continue
        hooks = [h.name for h in pm.get_hookcallers(plugin) or []]
        rows.append((name, hooks))
    return sorted(rows)
