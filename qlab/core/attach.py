"""Attaching a plan to a model: ``qlab.quantize(model, plan)``.

No model code is edited.  What is installed, and removed again by ``remove()``:

* extrinsic: a forward hook per covered module that quantizes its output(s);
* weights: a forward pre-hook that shadows each parameter with its quantized copy
  (an instance attribute of the same name, straight-through to the stored parameter),
  and a forward hook (always called) that takes the shadow away;
* gradients: a tensor hook per covered parameter that quantizes its gradient;
* intrinsic: the module's ``forward`` is wrapped (an instance attribute) in an
  intrinsic scope.  While a scope is open, a ``TorchFunctionMode`` sees every torch
  function call: arithmetic qlab emulates (linear, conv, matmul, avg-pool, batch norm
  in eval, add/sub/mul) runs intrinsically in the innermost scope's format, ops that do
  no rounding (relu, max-pool, cat, reshape, ...) pass through, and any other op that
  makes a floating-point tensor is an error, never a silent float op.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Dict

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .formats import Identity, Quantizer
from .intrinsic import (
    Intrinsic,
    intrinsic_adaptive_avg_pool2d,
    intrinsic_avg_pool2d,
    intrinsic_batch_norm,
    intrinsic_conv,
    intrinsic_elementwise,
    intrinsic_linear,
    intrinsic_matmul,
)
from .plan import Plan, _is_off

# ---------------------------------------------------------------------------- intrinsic scopes
_local = threading.local()


def _stack():
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


class IntrinsicError(ValueError):
    pass


# Ops that do no rounding: they pass through an intrinsic scope unchanged.
EXACT_OPS = frozenset(
    """
    relu relu_ threshold threshold_ hardtanh hardtanh_ relu6 clamp clamp_ clamp_min clamp_min_ clamp_max clamp_max_
    clip clip_ max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices
    max_pool3d_with_indices _max_pool1d _max_pool2d _max_pool3d adaptive_max_pool1d adaptive_max_pool2d
    adaptive_max_pool2d_with_indices _adaptive_max_pool2d fn
    cat concat concatenate stack hstack vstack flatten unflatten reshape view view_as contiguous clone detach detach_
    transpose t permute squeeze unsqueeze split split_with_sizes chunk narrow select unbind expand expand_as
    repeat tile flip roll movedim moveaxis swapaxes swapdims
    __getitem__ __setitem__ index_select gather masked_select take masked_fill masked_fill_ where
    to cpu cuda type_as float half double bfloat16 requires_grad_ retain_grad register_hook
    pad _pad constant_pad_nd zero_pad2d reflection_pad2d replication_pad2d
    zeros zeros_like ones ones_like empty empty_like full full_like new_zeros new_ones new_empty new_full new_tensor
    neg neg_ __neg__ negative abs abs_ __abs__ max min maximum minimum amax amin argmax argmin sort argsort topk
    eq ne lt le gt ge __eq__ __ne__ __lt__ __le__ __gt__ __ge__ isnan isfinite isinf sign signbit
    copy_ fill_ zero_ identity
    size dim numel __len__ __iter__ __format__ __repr__ __bool__ __hash__ __contains__ item tolist
    __reduce_ex__ __deepcopy__ data_ptr storage_offset stride is_contiguous element_size __get__ __set__
    """.split()
)

_ADD = {"add", "__add__", "__radd__", "__iadd__", "add_"}
_SUB = {"sub", "subtract", "__sub__", "__rsub__", "__isub__", "sub_"}
_MUL = {"mul", "multiply", "__mul__", "__rmul__", "__imul__", "mul_"}
_MATMUL = {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm"}
_INPLACE = {"__iadd__", "add_", "__isub__", "sub_", "__imul__", "mul_"}


def _arg(args, kwargs, i, name, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _has_float_tensor(obj) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.is_floating_point()
    if isinstance(obj, (tuple, list)):
        return any(_has_float_tensor(o) for o in obj)
    if isinstance(obj, dict):
        return any(_has_float_tensor(o) for o in obj.values())
    return False


class _IntrinsicMode(TorchFunctionMode):
    """Routes torch calls made inside an intrinsic scope (see module docstring)."""

    def __init__(self, generator=None):
        super().__init__()
        self.generator = generator

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        stack = _stack()
        if not stack:
            return func(*args, **kwargs)
        scope, spec, generator = stack[-1]
        if spec is None or spec.is_identity:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in EXACT_OPS or name.endswith("__get__") or name.endswith("__set__"):
            return func(*args, **kwargs)
        try:
            out = _dispatch(name, func, args, kwargs, spec, generator)
        except IntrinsicError:
            raise
        except ValueError as e:
            raise IntrinsicError(f"intrinsic scope {scope!r} ({spec}): {e}") from None
        if out is not NotImplemented:
            return out
        out = func(*args, **kwargs)
        if _has_float_tensor(out):
            raise IntrinsicError(
                f"intrinsic scope {scope!r} ({spec}): qlab cannot emulate '{name}' in this format. "
                "Emulated: linear, conv1d/2d, matmul/mm/bmm, avg_pool2d, adaptive_avg_pool2d, batch_norm (eval), "
                "add/sub/mul; passed through: ops with no rounding (relu, max_pool, cat, reshape, ...). "
                "Take this module out of the intrinsic plan or give it the spec 'none'."
            )
        return out


def _dispatch(name, func, args, kwargs, spec: Intrinsic, gen):
    if name == "linear":
        return intrinsic_linear(_arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight"),
                                _arg(args, kwargs, 2, "bias"), spec, gen)
    if name in ("conv1d", "conv2d"):
        return intrinsic_conv(_arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight"),
                              _arg(args, kwargs, 2, "bias"), _arg(args, kwargs, 3, "stride", 1),
                              _arg(args, kwargs, 4, "padding", 0), _arg(args, kwargs, 5, "dilation", 1),
                              _arg(args, kwargs, 6, "groups", 1), spec, gen)
    if name == "avg_pool2d":
        return intrinsic_avg_pool2d(_arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "kernel_size"),
                                    _arg(args, kwargs, 2, "stride"), _arg(args, kwargs, 3, "padding", 0),
                                    _arg(args, kwargs, 4, "ceil_mode", False),
                                    _arg(args, kwargs, 5, "count_include_pad", True),
                                    _arg(args, kwargs, 6, "divisor_override"), spec, gen)
    if name == "adaptive_avg_pool2d":
        return intrinsic_adaptive_avg_pool2d(_arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "output_size"),
                                             spec, gen)
    if name == "batch_norm":
        training = _arg(args, kwargs, 5, "training", False)
        if training:
            raise ValueError("batch norm in training mode cannot run intrinsically; call model.eval()")
        return intrinsic_batch_norm(_arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "running_mean"),
                                    _arg(args, kwargs, 2, "running_var"), _arg(args, kwargs, 3, "weight"),
                                    _arg(args, kwargs, 4, "bias"), _arg(args, kwargs, 7, "eps", 1e-5), spec, gen)
    if name == "dropout" or name == "dropout_":
        training = _arg(args, kwargs, 2, "training", True)
        p = _arg(args, kwargs, 1, "p", 0.5)
        if training and p > 0:
            raise ValueError("dropout in training mode scales by 1/(1-p); call model.eval()")
        return args[0] if args else kwargs["input"]
    if name in _ADD or name in _SUB or name in _MUL:
        a, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
        if not (_has_float_tensor(a) or _has_float_tensor(b)):
            return func(*args, **kwargs)
        alpha = kwargs.get("alpha", 1)
        if alpha != 1:
            raise ValueError(f"'{name}' with alpha={alpha} is not emulated; write the multiplication out")
        op = "add" if name in _ADD else "sub" if name in _SUB else "mul"
        if name.startswith("__r"):
            a, b = b, a
        y = intrinsic_elementwise(op, a, b, spec, gen)
        if name in _INPLACE:
            with torch.no_grad() if not a.requires_grad else _nullcontext():
                a.copy_(y)
            return a
        return y
    if name in _MATMUL:
        a, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other", _arg(args, kwargs, 1, "mat2"))
        if name == "__rmatmul__":
            a, b = b, a
        return intrinsic_matmul(a, b, spec, gen)
    return NotImplemented


@contextmanager
def _nullcontext():
    yield


@contextmanager
def float_scope():
    """Plain torch inside an intrinsic scope: for qlab's own quantizer calls from hooks."""
    stack = _stack()
    if not stack:
        yield
        return
    stack.append(("<qlab>", None, None))
    try:
        yield
    finally:
        stack.pop()


def _plain(q, t, generator):
    with float_scope():
        return q(t, generator)


@contextmanager
def intrinsic_scope(name: str, spec, generator=None):
    """Run the block with arithmetic done intrinsically in ``spec`` (innermost scope wins)."""
    from .intrinsic import as_intrinsic

    spec = None if spec is None else as_intrinsic(spec)
    stack = _stack()
    stack.append((name, spec, generator))
    mode = None
    if len(stack) == 1:
        mode = _IntrinsicMode(generator)
        mode.__enter__()
    try:
        yield
    finally:
        stack.pop()
        if mode is not None:
            mode.__exit__(None, None, None)


# Leaf modules whose arithmetic qlab emulates (or that do none).
SUPPORTED_LEAVES = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.Flatten, nn.Unflatten, nn.ZeroPad2d,
)


def _check_intrinsic_module(name: str, module: nn.Module, spec: Intrinsic):
    if spec.is_identity or list(module.children()):
        return
    if isinstance(module, SUPPORTED_LEAVES):
        return
    if type(module).__module__.startswith("torch.nn"):
        raise ValueError(
            f"plan intrinsic: module {name!r} ({type(module).__name__}) does arithmetic qlab cannot emulate in "
            f"{spec}; supported: {', '.join(sorted(c.__name__ for c in SUPPORTED_LEAVES))}"
        )


# ---------------------------------------------------------------------------- the handle
def _quantize_outputs(out, q: Quantizer, generator):
    if isinstance(out, torch.Tensor):
        return _plain(q, out, generator) if out.is_floating_point() else out
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return type(out)(*(_quantize_outputs(o, q, generator) for o in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_quantize_outputs(o, q, generator) for o in out)
    if isinstance(out, dict):
        return {k: _quantize_outputs(v, q, generator) for k, v in out.items()}
    return out


class QuantizeHandle:
    """A plan attached to a model.  ``remove()`` (or leaving the ``with`` block) restores it."""

    def __init__(self, model: nn.Module, plan: Plan, generator: torch.Generator | None = None):
        if not isinstance(model, nn.Module):
            raise ValueError(f"qlab.quantize needs an nn.Module, got {type(model).__name__}")
        if isinstance(plan, dict):
            plan = Plan.from_dict(plan)
        if not isinstance(plan, Plan):
            raise ValueError(f"qlab.quantize needs a qlab.Plan, got {type(plan).__name__}")
        self.model, self.plan, self.generator = model, plan, generator
        self._hooks = []
        self._forwards: Dict[nn.Module, object] = {}
        self._shadowed: Dict[nn.Module, list] = {}
        self.resolved = plan.resolve(model)
        self._validate()
        try:
            self._install()
        except Exception:
            self.remove()
            raise

    # -- validation -------------------------------------------------------------
    def _validate(self):
        modules = dict(self.model.named_modules())
        for placement in ("weights", "gradients"):
            mapping = getattr(self.plan, placement)
            for pattern in mapping:
                from .plan import _matches, resolve_map

                covered = resolve_map({pattern: mapping[pattern]}, self.model)
                if not any(p is not None for n in covered for p in modules[n]._parameters.values()):
                    raise ValueError(f"plan {placement}: pattern {pattern!r} covers no parameters (modules: "
                                     f"{', '.join(list(covered)[:5])})")
        for name, spec in self.resolved["intrinsic"].items():
            _check_intrinsic_module(name, modules[name], spec)

    # -- installation -----------------------------------------------------------
    def _install(self):
        modules = dict(self.model.named_modules())
        gen = self.generator
        for name, q in self.resolved["extrinsic"].items():
            if _is_off(q):
                continue
            self._hooks.append(modules[name].register_forward_hook(
                lambda mod, inp, out, q=q: _quantize_outputs(out, q, gen)))
        for name, q in self.resolved["weights"].items():
            m = modules[name]
            params = [k for k, p in m._parameters.items() if p is not None]
            if _is_off(q) or not params:
                continue
            self._hooks.append(m.register_forward_pre_hook(lambda mod, inp, q=q, params=params: self._shadow(mod, q, params)))
            self._hooks.append(m.register_forward_hook(lambda mod, inp, out, params=params: self._unshadow(mod, params),
                                                       always_call=True))
        seen = set()
        for name, q in self.resolved["gradients"].items():
            if _is_off(q):
                continue
            for p in modules[name]._parameters.values():
                if p is None or id(p) in seen or not p.requires_grad:
                    continue
                seen.add(id(p))
                self._hooks.append(p.register_hook(lambda g, q=q: _plain(q, g, gen)))
        for name, spec in self.resolved["intrinsic"].items():
            self._wrap_forward(name, modules[name], spec)

    def _shadow(self, mod, q, params):
        for k in params:
            mod.__dict__[k] = _plain(q, mod._parameters[k], self.generator)
        self._shadowed.setdefault(mod, params)

    def _unshadow(self, mod, params):
        for k in params:
            mod.__dict__.pop(k, None)

    def _wrap_forward(self, name, module, spec):
        had = module.__dict__.get("forward", None)
        orig = module.forward
        gen = self.generator

        def forward(*args, **kwargs):
            with intrinsic_scope(name, spec, gen):
                return orig(*args, **kwargs)

        forward.__qlab_wrapper__ = True
        self._forwards[module] = had
        module.__dict__["forward"] = forward

    # -- removal ----------------------------------------------------------------
    def remove(self):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for module, had in self._forwards.items():
            if had is None:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = had
        self._forwards.clear()
        for mod, params in self._shadowed.items():
            self._unshadow(mod, params)
        self._shadowed.clear()

    @property
    def active(self) -> bool:
        return bool(self._hooks or self._forwards)

    def __enter__(self):
        return self.model

    def __exit__(self, *exc):
        self.remove()
        return False


def quantize(model: nn.Module, plan: Plan, generator: torch.Generator | None = None) -> QuantizeHandle:
    """Attach ``plan`` to ``model`` (no code edited); use as a context manager or call ``remove()``."""
    return QuantizeHandle(model, plan, generator)
