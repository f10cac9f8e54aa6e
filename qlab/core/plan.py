"""Plans: where to quantize (four maps of pattern -> format) and how patterns pick modules.

A pattern is a glob over qualified module names (``features.*``, ``layer1.0.conv1``;
``*`` also crosses dots) or ``type:ClassName``.  For one module, each pattern is
looked for on the module itself and then on its ancestors (a pattern on a container
covers what is inside it); the winner is, in order:

1. the pattern that matches nearest to the module (itself before its parent ...),
2. an exact name before a glob before a ``type:`` pattern,
3. among globs, the one with the most literal characters,
4. the pattern written first in the plan.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
from dataclasses import dataclass, field
from typing import Dict

from torch import nn

from .formats import Identity, Quantizer
from .intrinsic import Intrinsic, as_intrinsic
from .spec import parse

PLACEMENTS = ("extrinsic", "intrinsic", "weights", "gradients")
_WILDCARDS = set("*?[]")


def _is_glob(p: str) -> bool:
    return any(c in _WILDCARDS for c in p)


def _literal_count(p: str) -> int:
    return sum(1 for c in p if c not in _WILDCARDS)


def _check_pattern(p) -> str:
    if not isinstance(p, str):
        raise ValueError(f"a plan pattern must be a string, got {p!r}")
    if p.startswith("type:") and not p[5:].strip():
        raise ValueError(f"pattern {p!r} names no class")
    return p


def _normalise(placement: str, mapping) -> Dict[str, object]:
    if mapping is None:
        return {}
    if isinstance(mapping, (str, Quantizer, Intrinsic)):
        mapping = {"*": mapping}  # one spec for the whole model
    if not isinstance(mapping, dict):
        raise ValueError(f"plan {placement} must be a dict of pattern -> spec, got {type(mapping).__name__}")
    out = {}
    for pattern, spec in mapping.items():
        _check_pattern(pattern)
        try:
            out[pattern] = as_intrinsic(spec) if placement == "intrinsic" else parse(spec)
        except ValueError as e:
            raise ValueError(f"plan {placement}[{pattern!r}]: {e}") from None
        if placement != "intrinsic" and isinstance(out[pattern], Intrinsic):
            raise ValueError(f"plan {placement}[{pattern!r}]: {spec} is an intrinsic spec; put it under intrinsic")
    return out


@dataclass(frozen=True, eq=False)
class Plan:
    """Where and how a model is quantized: four maps {pattern: spec}.

    >>> Plan(extrinsic={"features.*": "nearest,8,4"}, intrinsic={"classifier": "fixed(16,8,nearest)"})
    """

    extrinsic: Dict[str, object] = field(default_factory=dict)
    intrinsic: Dict[str, object] = field(default_factory=dict)
    weights: Dict[str, object] = field(default_factory=dict)
    gradients: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        for placement in PLACEMENTS:
            object.__setattr__(self, placement, _normalise(placement, getattr(self, placement)))

    def __eq__(self, other):
        if not isinstance(other, Plan):
            return NotImplemented
        return all(getattr(self, p) == getattr(other, p) for p in PLACEMENTS)

    def __hash__(self):
        return hash(self.to_json())

    def maps(self):
        return {p: getattr(self, p) for p in PLACEMENTS}

    def to_dict(self) -> dict:
        return {p: {k: str(v) for k, v in getattr(self, p).items()} for p in PLACEMENTS if getattr(self, p)}

    def to_json(self, indent=None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        unknown = [k for k in d if k not in PLACEMENTS]
        if unknown:
            raise ValueError(f"unknown placement {unknown[0]!r} in plan; expected {', '.join(PLACEMENTS)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    def to_python(self) -> str:
        args = ", ".join(f"{p}={json.dumps(v)}" for p, v in self.to_dict().items())
        return f"qlab.Plan({args})"

    def __repr__(self):
        return self.to_python()

    def resolve(self, model: nn.Module) -> Dict[str, Dict[str, object]]:
        """{placement: {module name: spec}} for every module a pattern covers (specs that are
        'none' included: they switch a covered module off).  Raises ValueError for a pattern
        that matches no module."""
        names = [n for n, _ in model.named_modules()]
        modules = dict(model.named_modules())
        out = {}
        for placement in PLACEMENTS:
            mapping = getattr(self, placement)
            if not mapping:
                out[placement] = {}
                continue
            for pattern in mapping:
                if not any(_matches(pattern, n, modules[n]) for n in names):
                    raise ValueError(_no_match_message(placement, pattern, model))
            out[placement] = resolve_map(mapping, model)
        return out


def _matches(pattern: str, name: str, module: nn.Module) -> bool:
    if pattern.startswith("type:"):
        cls = pattern[5:].strip()
        return any(c.__name__ == cls or f"{c.__module__}.{c.__qualname__}" == cls for c in type(module).__mro__)
    if _is_glob(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern


def _rank(pattern: str):
    if pattern.startswith("type:"):
        return (0, 0)
    if _is_glob(pattern):
        return (1, _literal_count(pattern))
    return (2, len(pattern))


def resolve_map(mapping: Dict[str, object], model: nn.Module) -> Dict[str, object]:
    """{module name: winning spec} for the modules that some pattern covers."""
    order = {p: i for i, p in enumerate(mapping)}
    out = {}
    # depth-first over the module tree, carrying the best match of the ancestors
    def visit(name, module, inherited):
        best = None
        for p in mapping:
            if _matches(p, name, module):
                key = _rank(p) + (-order[p],)
                if best is None or key > best[0]:
                    best = (key, p)
        current = (mapping[best[1]], best[1]) if best else inherited
        if current is not None:
            out[name] = current[0]
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child, current)

    visit("", model, None)
    return out


def _no_match_message(placement, pattern, model) -> str:
    names = [n for n, _ in model.named_modules() if n]
    if pattern.startswith("type:"):
        types = sorted({type(m).__name__ for m in model.modules()})
        near = difflib.get_close_matches(pattern[5:], types, n=3, cutoff=0.4)
        listing = ", ".join(f"type:{t}" for t in (near or types[:8]))
    else:
        near = difflib.get_close_matches(pattern, names, n=5, cutoff=0.3)
        listing = ", ".join(near or names[:8])
    return f"plan {placement}: pattern {pattern!r} matches no module; nearest names: {listing}"


def covered_names(resolved: Dict[str, object]):
    return [n for n, s in resolved.items() if not _is_off(s)]


def _is_off(spec) -> bool:
    if isinstance(spec, Intrinsic):
        return spec.is_identity
    return isinstance(spec, Identity)
