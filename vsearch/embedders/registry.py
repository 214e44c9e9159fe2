"""Model names -> factories: one table, filled by the built-ins and by plugins.

A plugin is a separate package that declares an entry point in the ``vsearch.models`` group,
naming a module (or object) with a ``register_models(register)`` function, as simonw/llm's
plugins do::

    # pyproject.toml of the plugin
    [project.entry-points."vsearch.models"]
    my-models = "my_vsearch_models"

    # my_vsearch_models.py
    def register_models(register):
        register("my-model", load_my_model, help="what it is, in a few words")

    def load_my_model(spec, pretrained=None, *, precision="auto"):
        return MyEmbedder(...)   # an Embedder (see vsearch.embedders.base)

A name may be followed by ``:OPTIONS`` ("efficientnet-lite0:gem"); the factory gets the whole
spec and parses its own options. Names that are in no table entry but are open_clip
architectures ("ViT-B-16", "ViT-B-16/openai") go to the "clip" entry. The core knows no plugin
by name; a plugin that fails to load or registers a taken name is left out and named in the
error a person gets for an unknown model.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vsearch.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    from vsearch.embedders.base import Embedder

ENTRY_POINT_GROUP = "vsearch.models"

#: factory(spec, pretrained, *, precision) -> Embedder; spec is the name as the user wrote it.
ModelFactory = Callable[..., "Embedder"]
RegisterFunction = Callable[..., None]


@dataclass(frozen=True)
class ModelEntry:
    """One registered model name."""

    name: str
    factory: ModelFactory
    help: str = ""
    aliases: tuple[str, ...] = ()
    source: str = "vsearch"  # "vsearch" for built-ins, else the plugin's entry point


class ModelRegistry:
    """The name -> factory table; `register` is what a plugin's ``register_models`` receives."""

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}  # every name and alias -> its entry
        self.problems: list[str] = []  # plugins left out, and why

    def register(
        self,
        name: str,
        factory: ModelFactory,
        *,
        help: str = "",
        aliases: Sequence[str] = (),
        source: str = "vsearch",
    ) -> None:
        """Add a model name (and aliases); refuse malformed or taken names."""
        names = [name, *aliases]
        for n in names:
            if (
                not isinstance(n, str)
                or not n
                or n != n.strip()
                or ":" in n
                or any(c.isspace() for c in n)
            ):
                raise ModelError(
                    f"model name {n!r} from {source} is not usable: a non-empty word without ':' "
                    "or spaces"
                )
            if n in self._entries:
                raise ModelError(
                    f"model name {n!r} from {source} is already registered by "
                    f"{self._entries[n].source}"
                )
        if not callable(factory):
            raise ModelError(
                f"model {name!r} from {source}: the factory {factory!r} is not callable"
            )
        entry = ModelEntry(
            name=name, factory=factory, help=help, aliases=tuple(aliases), source=source
        )
        for n in names:
            self._entries[n] = entry

    def entries(self) -> list[ModelEntry]:
        """Each registered model once, in registration order (built-ins first)."""
        seen: dict[str, ModelEntry] = {}
        for entry in self._entries.values():
            seen.setdefault(entry.name, entry)
        return list(seen.values())

    def names(self) -> list[str]:
        return [e.name for e in self.entries()]

    def lookup(self, spec: str) -> ModelEntry:
        """The entry serving a model spec, or a ModelError that lists what is accepted."""
        if not isinstance(spec, str) or not spec.strip():
            raise ModelError(
                "model must be a non-empty name such as 'clip' or 'efficientnet-lite0'; got "
                f"{spec!r}"
            )
        spec = spec.strip()
        entry = self._entries.get(spec.split(":", 1)[0])
        if entry is not None:
            return entry
        if "clip" in self._entries and _is_open_clip_name(spec):
            return self._entries["clip"]
        raise self.unknown(spec)

    def unknown(self, spec: str) -> ModelError:
        from vsearch.embedders.clip import known_archs

        archs = known_archs()
        candidates = [*self._entries, *archs]
        close = [c for c in candidates if c.lower() == spec.lower()]
        close += [
            c
            for c in difflib.get_close_matches(spec, candidates, n=3, cutoff=0.6)
            if c not in close
        ]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        listed = "; ".join(
            f"'{e.name}'" + (f" ({e.help})" if e.help else "") for e in self.entries()
        )
        problems = f" Plugins left out: {'; '.join(self.problems)}." if self.problems else ""
        return ModelError(
            f"model {spec!r} is not known.{hint} Registered models: {listed}; also any open_clip "
            "architecture "
            f"such as ViT-B-32, ViT-B-16, ViT-L-14 (optionally as 'clip:ARCH/TAG'; {len(archs)} in "
            "all, see "
            "open_clip.list_models()). More models come from plugins (entry point group "
            f"{ENTRY_POINT_GROUP!r})." + problems
        )

    def load_plugins(self, entry_points: Sequence) -> None:
        """Call each plugin's ``register_models(register)``; a failing plugin is recorded, not
        fatal."""
        for ep in entry_points:
            source = f"plugin {ep.name!r} ({ep.value})"
            try:
                plugin = ep.load()
                hook = getattr(plugin, "register_models", None)
                if hook is None:
                    raise ModelError(f"{ep.value} has no register_models(register) function")
            except Exception as e:  # noqa: BLE001 - a broken third-party package must not stop vsearch
                self.problems.append(f"{source} could not be loaded: {e}")
                continue
            before = dict(self._entries)

            def register(name, factory, *, help="", aliases=(), _source=source):
                self.register(name, factory, help=help, aliases=aliases, source=_source)

            try:
                hook(register)
            except Exception as e:  # noqa: BLE001
                self._entries = before  # all of a plugin's models, or none
                self.problems.append(f"{source} failed in register_models: {e}")


def _is_open_clip_name(spec: str) -> bool:
    from vsearch.embedders.clip import is_clip_arch

    arch = spec.partition("/")[0]
    return is_clip_arch(spec) or is_clip_arch(arch)


def _plugin_entry_points() -> list:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name, ep.value))


_lock = threading.Lock()
_registry: ModelRegistry | None = None


def registry() -> ModelRegistry:
    """The table: built-ins, then installed plugins (looked up once per process)."""
    global _registry
    with _lock:
        if _registry is None:
            from vsearch.embedders.builtin_models import register_models

            table = ModelRegistry()
            register_models(table.register)
            table.load_plugins(_plugin_entry_points())
            _registry = table
        return _registry


def registered_models() -> list[ModelEntry]:
    """Every model name that load_embedder accepts besides open_clip architectures."""
    return registry().entries()


def lookup(spec: str) -> ModelEntry:
    return registry().lookup(spec)
