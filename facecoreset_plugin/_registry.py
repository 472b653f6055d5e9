"""Entry-point registries: list plugins without importing them, import one when it is loaded."""

from __future__ import annotations

__all__ = ["PluginInfo", "PluginRegistry", "GROUPS", "registry", "available", "refresh"]

import importlib
import importlib.metadata
import importlib.util
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import entrypoints

from .errors import PluginLoadError, UnknownPluginError

#: short kind -> entry-point group
GROUPS: dict[str, str] = {
    "aggregators": "facecoreset.aggregators",
    "backbones": "facecoreset.backbones",
    "protocols": "facecoreset.protocols",
}

BUILTIN_DISTRIBUTION = "facecoreset"
INSTALL_HINT = (
    "install a package that registers one under the entry-point group {group!r} "
    "(see the README's plugin guide), or pass the class itself to load()"
)


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin, as declared by its distribution (nothing imported)."""

    name: str  # the registered name, e.g. "mean"
    group: str  # entry-point group, e.g. "facecoreset.aggregators"
    target: str  # "module:object" the entry point points at
    distribution: str  # providing distribution, "?" when unknown
    version: str  # its version, "?" when unknown

    @property
    def module(self) -> str:
        return self.target.split(":", 1)[0]

    @property
    def is_builtin(self) -> bool:
        return _norm(self.distribution) == BUILTIN_DISTRIBUTION


def _norm(dist: str) -> str:
    return dist.lower().replace("_", "-")


class PluginRegistry:
    """Discovers one entry-point group, caches the listing, imports plugins lazily.

    Args:
        group: the entry-point group name.
        path: directories to scan instead of ``sys.path`` (tests use this to build
            synthetic entry points).
    """

    def __init__(self, group: str, path: list[str] | None = None) -> None:
        self.group = group
        self.path = path
        self._entries: dict[str, PluginInfo] | None = None
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- listing -----------------------------------------------------------------
    def refresh(self) -> None:
        """Forget the cached listing and imported objects (after installing a plugin)."""
        with self._lock:
            self._entries = None
            self._loaded.clear()

    def entries(self, refresh: bool = False) -> dict[str, PluginInfo]:
        """Name -> PluginInfo for every plugin of the group; warns about broken ones."""
        if refresh:
            self.refresh()
        with self._lock:
            if self._entries is None:
                self._entries = self._discover()
            return dict(self._entries)

    def names(self, refresh: bool = False) -> list[str]:
        return sorted(self.entries(refresh))

    def _discover(self) -> dict[str, PluginInfo]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = entrypoints.get_group_all(self.group, path=self.path)
        for w in caught:  # malformed entry-point lines
            warnings.warn(f"{self.group}: ignoring a malformed plugin declaration: {w.message}", stacklevel=4)
        by_name: dict[str, list[PluginInfo]] = {}
        for ep in found:
            dist = getattr(ep, "distro", None)
            info = PluginInfo(
                name=ep.name,
                group=self.group,
                target=f"{ep.module_name}:{ep.object_name}" if ep.object_name else ep.module_name,
                distribution=getattr(dist, "name", None) or "?",
                version=getattr(dist, "version", None) or _installed_version(getattr(dist, "name", None)),
            )
            if not _module_findable(info.module):
                warnings.warn(
                    f"plugin {info.name!r} in {self.group} (from distribution {info.distribution} "
                    f"{info.version}) is broken: module {info.module!r} cannot be found; "
                    "the other plugins still work. Reinstall or uninstall that distribution.",
                    stacklevel=4,
                )
                continue
            by_name.setdefault(info.name, []).append(info)
        result: dict[str, PluginInfo] = {}
        for name, candidates in by_name.items():
            # identical declarations (same dist seen twice on the path) are not duplicates
            # (an editable install is seen twice: its .egg-info in the source tree has no version)
            unique_map: dict[tuple[str, str], PluginInfo] = {}
            for c in candidates:
                key = (c.target, _norm(c.distribution))
                if key not in unique_map or unique_map[key].version == "?":
                    unique_map[key] = c
            unique = list(unique_map.values())
            winner = sorted(unique, key=lambda c: not c.is_builtin)[0]
            if len(unique) > 1:
                losers = ", ".join(f"{c.target} ({c.distribution} {c.version})" for c in unique if c is not winner)
                warnings.warn(
                    f"{len(unique)} plugins are registered as {name!r} in {self.group}: using "
                    f"{winner.target} from {winner.distribution} {winner.version}; ignoring {losers}. "
                    "Built-ins win over third parties, otherwise the first on sys.path; "
                    "pass the class to load() to use another one.",
                    stacklevel=4,
                )
            result[name] = winner
        return result

    # -- loading -----------------------------------------------------------------
    def info(self, name: str) -> PluginInfo:
        entries = self.entries()
        if name not in entries:
            names = ", ".join(sorted(entries)) or "(none)"
            raise UnknownPluginError(
                f"unknown {self.group.split('.')[-1][:-1]} {name!r}; available: {names}. "
                "To add one, " + INSTALL_HINT.format(group=self.group)
            )
        return entries[name]

    def load(self, name: str) -> Any:
        """Import and return the object registered as ``name``."""
        info = self.info(name)
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
        obj = _import_target(info)
        with self._lock:
            self._loaded[name] = obj
        return obj


def _installed_version(dist_name: str | None) -> str:
    """Version from installed metadata (an .egg-info directory name carries none)."""
    if not dist_name:
        return "?"
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _module_findable(module: str) -> bool:
    top = module.split(".", 1)[0]
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _import_target(info: PluginInfo) -> Any:
    module_name, _, attr = info.target.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
    except Exception as exc:  # any failure inside a third-party import is a plugin error
        raise PluginLoadError(
            f"plugin {info.name!r} ({info.group}) from distribution {info.distribution} "
            f"{info.version} failed to load {info.target!r}: {type(exc).__name__}: {exc}. "
            "Fix or reinstall that distribution, or uninstall it."
        ) from exc
    return obj


_REGISTRIES: dict[str, PluginRegistry] = {}


def registry(kind: str) -> PluginRegistry:
    """The process-wide registry for ``kind`` ("aggregators", "backbones", "protocols")."""
    if kind not in GROUPS:
        raise UnknownPluginError(f"unknown plugin kind {kind!r}; valid kinds: {', '.join(GROUPS)}")
    if kind not in _REGISTRIES:
        _REGISTRIES[kind] = PluginRegistry(GROUPS[kind])
    return _REGISTRIES[kind]


def available(kind: str = "aggregators", refresh: bool = False) -> list[str]:
    """Sorted names registered for ``kind``; ``refresh=True`` rescans installed distributions."""
    return registry(kind).names(refresh=refresh)


def refresh() -> None:
    """Rescan every registry (call after installing or removing a plugin at run time)."""
    for reg in _REGISTRIES.values():
        reg.refresh()
