"""Finds adapters through entry points, lazily: the light spec of a kind at config load
(`safe_mcp.adapter_specs`), the adapter class itself only when a target of that kind is first used
(`safe_mcp.adapters`). A kind that registers no spec is specified by its adapter class (imported then)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from importlib.util import find_spec

from safe_mcp.adapter import Adapter, AdapterSpec
from safe_mcp.errors import ConfigError

__all__ = ["available_kinds", "load_adapter", "load_spec"]

GROUP = "safe_mcp.adapters"
SPEC_GROUP = "safe_mcp.adapter_specs"


def available_kinds() -> list[str]:
    return sorted(_group(GROUP))


def _group(group: str) -> dict[str, EntryPoint]:
    """The group's entry points by name, the first of each name (as before)."""
    return _groups().get(group, {})


@cache
def _groups() -> dict[str, dict[str, EntryPoint]]:
    """Both of safe-mcp's entry point groups, read in one pass: each read scans every installed
    distribution's metadata (~7 ms at start-up), whichever group it asks for."""
    every = entry_points()  # one scan; `select` picks from it (Python 3.11 and later alike)
    out: dict[str, dict[str, EntryPoint]] = {}
    for group in (GROUP, SPEC_GROUP):
        out[group] = {}
        for ep in every.select(group=group):
            out[group].setdefault(ep.name, ep)
    return out


def _entry(group: str, kind: str) -> EntryPoint | None:
    return _group(group).get(kind)


def _not_installed(kind: str, source: str, key: str) -> ConfigError:
    known = ", ".join(available_kinds()) or "none"
    return ConfigError(
        source, key, f"no adapter for kind {kind!r} is installed (installed: {known})",
        f"install the extra that provides it, e.g. pip install 'safe-mcp[{kind}]'",
    )


def _import(ep: EntryPoint, kind: str, source: str, key: str) -> object:
    try:
        return ep.load()  # the import system is thread-safe: a target first used by two threads at once is fine
    except ImportError as exc:
        raise ConfigError(
            source, key, f"the {kind} adapter cannot be imported: {exc}",
            f"install its dependencies: pip install 'safe-mcp[{kind}]'",
        ) from None


def load_spec(kind: str, *, source: str = "", key: str = "kind") -> type[AdapterSpec]:
    """What the config needs of `kind` (settings model, tools, secret keys, `describe`): its registered
    spec, which does not import the adapter's driver; else the adapter class itself.

    Raises:
        ConfigError: no adapter is installed for this kind, or its extra is missing.
    """
    if _entry(SPEC_GROUP, kind) is None:
        return load_adapter(kind, source=source, key=key)
    return _registered_spec(kind, source, key)


@cache
def _registered_spec(kind: str, source: str, key: str) -> type[AdapterSpec]:
    ep = _entry(SPEC_GROUP, kind)
    if ep is None or _entry(GROUP, kind) is None:  # a spec without its adapter cannot serve
        raise _not_installed(kind, source, key)
    spec = _import(ep, kind, source, key)
    if not (isinstance(spec, type) and issubclass(spec, AdapterSpec) and getattr(spec, "kind", None) == kind):
        raise ConfigError(source, key, f"entry point {kind!r} in {SPEC_GROUP} is not a safe_mcp AdapterSpec of kind {kind!r}")
    for module in spec.requires:
        if find_spec(module) is None:
            raise ConfigError(
                source, key, f"the {kind} adapter cannot be imported: No module named {module!r}",
                f"install its dependencies: pip install 'safe-mcp[{kind}]'",
            )
    return spec


@cache
def load_adapter(kind: str, *, source: str = "", key: str = "kind") -> type[Adapter]:
    """Import the adapter registered for `kind` (and only it). When the kind registers a spec too,
    the adapter must be built on that spec (else the config was validated against other settings).

    Raises:
        ConfigError: no adapter is installed for this kind, its extra is missing, or it does not match its spec.
    """
    ep = _entry(GROUP, kind)
    if ep is None:
        raise _not_installed(kind, source, key)
    cls = _import(ep, kind, source, key)
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise ConfigError(source, key, f"entry point {kind!r} is not a safe_mcp Adapter")
    if _entry(SPEC_GROUP, kind) is not None:
        spec = _registered_spec(kind, source, key)
        if not issubclass(cls, spec) or cls.settings_model is not spec.settings_model or cls.tools != spec.tools:
            raise ConfigError(source, key, f"the {kind} adapter does not match its spec {spec.__qualname__}",
                              "reinstall the package that provides it")
    return cls
