"""Spec strings -> format objects: ``qlab.parse``.

Two spellings read to the same object:

* canonical, what ``str(q)`` prints: ``fixed(8,4,nearest)``, ``float(5,10,even)``,
  ``fp16``, ``log(8,0,down)``, ``binary(mean)``, ``ternary(auto,mean)``,
  ``sparse(0.01)``, ``none``, ``intrinsic(fixed(8,4,nearest),acc=fixed(16,8,nearest))``;
* TensorQuant's shortcuts: ``nearest,8,4`` ``zero,8,4`` ``down,8,4`` ``stochastic,8,4``
  (also ``even``/``up``), ``sparse,0.01``, ``binary[,m]``, ``ternary[,m[,t]]``, ``fp16``,
  ``logarithmic``, ``none``.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from .formats import (
    Binary,
    FixedPoint,
    Float,
    FLOAT_ROUNDINGS,
    Identity,
    Log,
    Quantizer,
    Sparse,
    Ternary,
    _FLOAT_PRESETS,
    float_preset,
)
from .rounding import ROUNDINGS

_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<id>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>[(),=]))"
)


@dataclass
class _Call:
    name: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    called: bool = False  # written with parentheses


class SpecError(ValueError):
    pass


def _tokenize(text: str):
    pos, out = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SpecError(f"bad spec {text!r}: unexpected {text[pos:].strip()[:12]!r} at position {pos}")
        kind = m.lastgroup
        tok = m.group(kind)
        out.append((kind, tok, m.start(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None, len(self.text))

    def take(self, value=None):
        tok = self.peek()
        if tok[0] is None or (value is not None and tok[1] != value):
            want = f"{value!r}" if value else "more"
            got = repr(tok[1]) if tok[0] else "the end"
            raise SpecError(f"bad spec {self.text!r}: expected {want} at position {tok[2]}, found {got}")
        self.i += 1
        return tok

    def value(self):
        kind, tok, pos = self.peek()
        if kind == "num":
            self.i += 1
            return float(tok) if any(c in tok for c in ".eE") else int(tok)
        if kind == "id":
            return self.call()
        raise SpecError(f"bad spec {self.text!r}: expected a number or a name at position {pos}, found {tok!r}")

    def call(self):
        kind, name, pos = self.take()
        if kind != "id":
            raise SpecError(f"bad spec {self.text!r}: expected a format name at position {pos}, found {name!r}")
        c = _Call(name)
        if self.peek()[1] == "(":
            self.take("(")
            c.called = True
            if self.peek()[1] != ")":
                while True:
                    self.arg(c)
                    if self.peek()[1] == ",":
                        self.take(",")
                        continue
                    break
            self.take(")")
        return c

    def arg(self, c: _Call):
        kind, tok, pos = self.peek()
        if kind == "id" and self.i + 1 < len(self.toks) and self.toks[self.i + 1][1] == "=":
            self.i += 2
            c.kwargs[tok] = self.value()
        else:
            if c.kwargs:
                raise SpecError(f"bad spec {self.text!r}: positional argument after keyword at position {pos}")
            c.args.append(self.value())

    def top(self):
        c = self.call()
        if self.peek()[1] == "," and not c.called:  # TensorQuant shortcut "nearest,8,4"
            while self.peek()[1] == ",":
                self.take(",")
                self.arg(c)
        if self.peek()[0] is not None:
            kind, tok, pos = self.peek()
            raise SpecError(f"bad spec {self.text!r}: unexpected {tok!r} at position {pos}")
        return c


def _word(text, v, what):
    if isinstance(v, _Call) and not v.called and not v.args:
        return v.name
    raise SpecError(f"bad spec {text!r}: {what} must be a name, got {_show(v)}")


def _int(text, v, what):
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise SpecError(f"bad spec {text!r}: {what} must be an integer, got {_show(v)}")


def _num_or_word(text, v, what):
    if isinstance(v, (int, float)):
        return float(v)
    return _word(text, v, what)


def _show(v):
    if isinstance(v, _Call):
        return repr(v.name + ("(...)" if v.called else ""))
    return repr(v)


def _nargs(text, c, lo, hi):
    n = len(c.args)
    if not lo <= n <= hi:
        want = f"{lo}" if lo == hi else f"{lo} to {hi}"
        raise SpecError(f"bad spec {text!r}: {c.name} takes {want} arguments, got {n}")


def _no_kwargs(text, c, allowed=()):
    bad = [k for k in c.kwargs if k not in allowed]
    if bad:
        raise SpecError(f"bad spec {text!r}: {c.name} has no option {bad[0]!r}")


def _build(text: str, c: _Call):
    name = c.name.lower()
    try:
        if name == "fixed":
            _no_kwargs(text, c)
            _nargs(text, c, 2, 3)
            r = _word(text, c.args[2], "rounding") if len(c.args) > 2 else "nearest"
            return FixedPoint(_int(text, c.args[0], "W"), _int(text, c.args[1], "F"), r)
        if name in ROUNDINGS and not c.called:  # "nearest,8,4"
            _nargs(text, c, 2, 2)
            return FixedPoint(_int(text, c.args[0], "W"), _int(text, c.args[1], "F"), name)
        if name == "float":
            _no_kwargs(text, c)
            _nargs(text, c, 2, 5)
            r, flags = "even", set()
            for a in c.args[2:]:
                w = _word(text, a, "float option")
                if w in ("fn", "inf"):
                    flags.add(w)
                elif w in FLOAT_ROUNDINGS:
                    r = w
                else:
                    raise SpecError(f"bad spec {text!r}: unknown float option {w!r} (a rounding, 'fn' or 'inf')")
            return Float(_int(text, c.args[0], "E"), _int(text, c.args[1], "M"), r, fn="fn" in flags, inf="inf" in flags)
        if name in _FLOAT_PRESETS:
            _no_kwargs(text, c)
            _nargs(text, c, 0, 1)
            q = float_preset(name)
            if c.args:
                q = Float(q.E, q.M, _word(text, c.args[0], "rounding"), fn=q.fn)
            return q
        if name == "log":
            _no_kwargs(text, c)
            _nargs(text, c, 2, 3)
            r = _word(text, c.args[2], "rounding") if len(c.args) > 2 else "nearest"
            return Log(_int(text, c.args[0], "W"), _int(text, c.args[1], "E"), r)
        if name == "logarithmic":
            # TensorQuant's log quantizer: 2**floor(log2|x|), over float32's whole range
            # (sign and 8 exponent bits: 255 exponents ending at 127).
            _nargs(text, c, 0, 0)
            return Log(9, 127, "down")
        if name == "binary":
            _no_kwargs(text, c)
            _nargs(text, c, 0, 1)
            return Binary(_num_or_word(text, c.args[0], "scale")) if c.args else Binary()
        if name == "ternary":
            _no_kwargs(text, c)
            _nargs(text, c, 0, 2)
            if c.called:  # ternary(threshold, scale)
                vals = [_num_or_word(text, a, "ternary argument") for a in c.args]
                return Ternary(*vals)
            # shortcut ternary,m[,t]: marginal value first, then threshold
            kw = {}
            if len(c.args) >= 1:
                kw["scale"] = _num_or_word(text, c.args[0], "ternary scale")
            if len(c.args) == 2:
                kw["threshold"] = _num_or_word(text, c.args[1], "ternary threshold")
            return Ternary(**kw)
        if name == "sparse":
            _no_kwargs(text, c)
            _nargs(text, c, 1, 1)
            v = c.args[0]
            if not isinstance(v, (int, float)):
                raise SpecError(f"bad spec {text!r}: sparse threshold must be a number, got {_show(v)}")
            return Sparse(float(v))
        if name in ("none", "identity", "float32"):
            _nargs(text, c, 0, 0)
            return Identity()
        if name == "intrinsic":
            from .intrinsic import Intrinsic

            _no_kwargs(text, c, ("acc", "accumulate", "inputs"))
            _nargs(text, c, 1, 1)
            q = _build(text, c.args[0]) if isinstance(c.args[0], _Call) else None
            if not isinstance(q, Quantizer):
                raise SpecError(f"bad spec {text!r}: intrinsic needs a format, got {_show(c.args[0])}")
            kw = {}
            if "acc" in c.kwargs:
                a = c.kwargs["acc"]
                kw["acc"] = _build(text, a) if isinstance(a, _Call) else None
                if not isinstance(kw["acc"], Quantizer):
                    raise SpecError(f"bad spec {text!r}: acc must be a format, got {_show(a)}")
            if "accumulate" in c.kwargs:
                kw["accumulate"] = _word(text, c.kwargs["accumulate"], "accumulate")
            if "inputs" in c.kwargs:
                w = _word(text, c.kwargs["inputs"], "inputs").lower()
                if w not in ("true", "false"):
                    raise SpecError(f"bad spec {text!r}: inputs must be true or false, got {w!r}")
                kw["inputs"] = w == "true"
            return Intrinsic(q, **kw)
    except SpecError:
        raise
    except ValueError as e:
        raise SpecError(f"bad spec {text!r}: {e}") from None
    near = difflib.get_close_matches(name, KNOWN_NAMES, n=2)
    hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    raise SpecError(f"bad spec {text!r}: unknown format {c.name!r}{hint} (known: {', '.join(KNOWN_NAMES)})")


KNOWN_NAMES = (
    ["fixed", "float", "log", "binary", "ternary", "sparse", "none", "intrinsic", "logarithmic"]
    + list(ROUNDINGS)
    + list(_FLOAT_PRESETS)
)


def parse(spec):
    """Read a spec string (or pass a format object through) and return the format object.

    >>> parse("nearest,8,4") == parse("fixed(8,4,nearest)") == FixedPoint(8, 4)
    True
    """
    from .intrinsic import Intrinsic

    if isinstance(spec, (Quantizer, Intrinsic)):
        return spec
    if spec is None:
        return Identity()
    if not isinstance(spec, str):
        raise ValueError(f"a spec must be a string or a qlab format, got {type(spec).__name__}: {spec!r}")
    if not spec.strip():
        raise SpecError("bad spec '': empty")
    return _build(spec, _Parser(spec).top())
