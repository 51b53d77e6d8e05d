"""The registries: one per swappable part, each mapping a config string to "module:attribute".

    MODEL_ADAPTERS   model.adapter           -> factory(params=..., checkpoint=...) -> UnifiedModel
    JUDGE_BACKENDS   judge.backend, eval.evaluator_backend, a Triton model's `backend` -> JudgeBackend class
    BOXER_BACKENDS   judge.boxer_backend     -> BoxerBackend class
    PROMPT_SOURCES   the scheme of prompts.source / eval_source (`toy://eval`) -> loader(name) -> [Prompt]
    PROMPT_FORMATS   a published benchmark's prompt-file format (prompts.format, `srum prompts import
                     --format`) -> parse_prompts(text, source), or load(uri, storage) when it `reads_uri`
    BENCHMARKS       eval.benchmarks[].name  -> Benchmark class (evaluation/protocol.py)

The core reads these tables and never names a model: what differs between models is an entry's *hooks*
(functions, also "module:attribute", imported only when called) and *traits* (plain values). Each
registry declares the hooks and traits it knows, with their defaults, so a typo in a plugin fails at
registration and the core can ask any entry for any of them.

Plugins register their entries when first needed: `BUILTIN_PLUGINS` are imported on the first lookup of
any registry. A plugin module imports this one and calls `register`; it must stay as light as this module
(no torch, no numpy), because `srum config validate` and the cluster commands read the registries.
Only the standard library is imported here.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

# The modules that register the built-in entries (the real-model adapters, the toy world).
BUILTIN_PLUGINS: Tuple[str, ...] = ("srum_jobs.evaluation.plugin", "srum_jobs.models.plugins",
                                    "srum_jobs.toy.plugin")


class RegistryError(ValueError):
    """A registration that contradicts the registry (duplicate name, unknown hook or trait)."""


@dataclass(frozen=True)
class Entry:
    name: str
    target: str                                        # "module:attribute"
    hooks: Mapping[str, str] = field(default_factory=dict)      # hook -> "module:function"
    traits: Mapping[str, Any] = field(default_factory=dict)


def import_target(target: str) -> Any:
    """The attribute named by "package.module:attribute", imported now."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry(Mapping[str, str]):
    """name -> target, read like a dict (`name in R`, `sorted(R)`, `R[name]`), plus hooks and traits."""

    def __init__(self, kind: str, *, hooks: Tuple[str, ...] = (), traits: Optional[Mapping[str, Any]] = None):
        self.kind = kind
        self.hook_names = tuple(hooks)
        self.trait_defaults = dict(traits or {})
        self._entries: Dict[str, Entry] = {}

    # registration (plugins)
    def register(self, name: str, target: str, *, hooks: Optional[Mapping[str, str]] = None,
                 **traits: Any) -> None:
        if name in self._entries:
            if self._entries[name] == Entry(name, target, dict(hooks or {}), traits):
                return                      # the same plugin imported twice
            raise RegistryError(f"{self.kind} {name!r} is registered twice ({self._entries[name].target}, {target})")
        for what, given, known in (("hook", hooks or {}, self.hook_names), ("trait", traits, self.trait_defaults)):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise RegistryError(f"{self.kind} {name!r}: unknown {what}(s) {unknown}; "
                                    f"known: {', '.join(known) or 'none'}")
        for text in (target, *(hooks or {}).values()):
            if text.count(":") != 1:
                raise RegistryError(f"{self.kind} {name!r}: {text!r} is not 'package.module:attribute'")
        self._entries[name] = Entry(name, target, dict(hooks or {}), dict(traits))

    # lookup (the core)
    def entry(self, name: str) -> Entry:
        _load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(name) from None

    def load(self, name: str) -> Any:
        """The registered attribute itself (a factory or a class), imported now."""
        return import_target(self.entry(name).target)

    def hook(self, name: str, hook: str) -> Optional[Callable[..., Any]]:
        """The entry's function for `hook`, imported now, or None when the entry has none (or is unknown)."""
        if hook not in self.hook_names:
            raise RegistryError(f"{self.kind}: no hook {hook!r}; known: {', '.join(self.hook_names) or 'none'}")
        _load_plugins()
        entry = self._entries.get(name)
        target = entry.hooks.get(hook) if entry is not None else None
        return import_target(target) if target else None

    def trait(self, name: str, trait: str) -> Any:
        """The entry's value for `trait`, or the registry's default (also for a name it does not know)."""
        if trait not in self.trait_defaults:
            raise RegistryError(f"{self.kind}: no trait {trait!r}; known: {', '.join(self.trait_defaults) or 'none'}")
        _load_plugins()
        entry = self._entries.get(name)
        return entry.traits.get(trait, self.trait_defaults[trait]) if entry is not None else self.trait_defaults[trait]

    # Mapping: name -> target
    def __getitem__(self, name: str) -> str:
        return self.entry(name).target

    def __iter__(self) -> Iterator[str]:
        _load_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        _load_plugins()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {dict(self)!r})"


MODEL_ADAPTERS = Registry(
    "model adapter",
    hooks=("prepare",            # prepare(model_config): once per `srum run`, before any stage (e.g. build base weights)
           "check",              # check(model_config) -> [problem]: what `srum config validate` can see without loading
           "training_params"),   # training_params(training_config) -> {param: str}: extra params for training only
    traits={"vqa_style": "question",     # how the understanding check asks this model: "question" or "judge"
            "judge_agreement": False})   # its own judge is compared with the benchmark (eval.judge_agreement)
JUDGE_BACKENDS = Registry(
    "judge backend",
    hooks=("check",),            # check(backend_params) -> [problem], for a backend the local server will load
    traits={"understanding_of": None,    # the model adapter whose own understanding side this backend is
            "evaluator_hint": "e.g. hf with a Qwen2.5-VL model_path",   # a different evaluator to suggest
            "request_errors": ()})       # "module:Class" exceptions meaning "this request is malformed"
BOXER_BACKENDS = Registry("boxer backend")
PROMPT_SOURCES = Registry("prompt source")   # scheme -> loader(name) -> List[Prompt]; ValueError for a bad name
PROMPT_FORMATS = Registry(
    "prompt format",
    hooks=("sniff_text",         # sniff_text(name, text) -> bool: a file of this format (format `auto`)
           "sniff_uri",          # sniff_uri(uri) -> bool: a location of this format (formats that read a URI)
           "hint"),              # hint(row) -> str: for a JSONL row with this format's fields, what reads it
    traits={"reads_uri": False})  # the parser takes (uri, storage): the format spans several files
BENCHMARKS = Registry("benchmark")

_loaded = False
_lock = threading.RLock()


def _load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        _loaded = True              # before importing: a plugin's own lookups must not recurse
        for module in BUILTIN_PLUGINS:
            importlib.import_module(module)
