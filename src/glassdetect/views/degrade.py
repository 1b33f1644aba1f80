"""Image degradations: re-compression, blur, resizing, noise — for training augmentation and
robustness sweeps.

Every degradation is a pure function ``uint8 (H, W, 3) array in -> uint8 (H', W', 3) array out``
(C-contiguous; the input is never modified; when no step applies the input itself may be
returned) that draws all of its randomness from an explicit :class:`numpy.random.Generator`.
Nothing here touches files: compression round-trips through memory.

Spec grammar
------------
Steps are joined by ``+`` and applied left to right. A step is ``kind`` or
``kind:key=value,key=value``; a value is a number or a range ``lo-hi`` (drawn uniformly per
image; integer parameters draw an integer in ``[lo, hi]``). Every step takes ``p=`` (the
probability that it is applied; default 1, never a range).

=========================================  ===========================================================
``jpeg:q=75[,sub=420|422|444]``            Pillow JPEG at quality q (1-100), chroma subsampling
                                           (default 4:2:0), decoded back
``webp:q=80``                              Pillow lossy WebP at quality q (0-100), decoded back
``blur:sigma=2``                           Gaussian blur, separable, kernel radius round(3σ), borders
                                           mirrored (scipy's ``reflect``); sigma 0 = identity
``resize:f=0.5[,kernel=...]``              scale both sides by f: new side = max(1, floor(side·f + 0.5));
                                           kernel bicubic (default) or bilinear (torch's antialiased
                                           uint8 kernels, Pillow's filters), area (Pillow BOX), lanczos
``resize:long=2048[,kernel=...]``          downscale so the long side is at most N (it becomes N; the
                                           short side max(1, floor(short·N/long + 0.5))); identity when
                                           the image is already that small
``noise:sigma=3``                          additive Gaussian noise (grey levels), rounded and clipped
``window:side=1024-1536[,align=12]``       a random square crop of side ``side`` (clamped to each image
                                           side), at a uniform position (top and left multiples of
                                           ``align``, default 1): a fresh training window of a large
                                           image every time (put it first, before the views)
``social``                                 a social-media upload: long side > 2048 → downscaled to 2048,
                                           otherwise with probability 0.5 scaled by f ~ U[0.5, 1];
                                           then JPEG q ~ U{70..90} (4:2:0)
=========================================  ===========================================================

``""`` and ``"none"`` are the identity; a name of :data:`AUGMENT_PRESETS` (``standard``,
``strong``) expands to its chain, also inside a longer chain. :func:`parse` returns a
:class:`Degradation` whose ``name`` is the canonical spec — keys in the order above, defaults
left out, numbers written compactly (``0.50`` → ``0.5``, ``75.0`` → ``75``), a range with equal
ends written as one number — so ``parse(d.name) == d`` and equal specs compare equal.

Sweeps
------
:func:`sweep` turns a preset of :data:`SWEEP_PRESETS` or a ``;``-separated list of specs
(preset names allowed as items) into :class:`SweepPoint` s, the ``clean`` point first.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .imageops import (  # noqa: F401 - gaussian_blur, encode_jpeg, resize_to, long_side_size: also part of this module's API
    _RESIZE_KERNELS, _SUBSAMPLING, _blur, _check_image, _decode_bytes, _jpeg, _noise, _resize, _social, _webp, _window,
    encode_jpeg, gaussian_blur, gaussian_kernel, long_side_size, resize_to,
)

__all__ = [
    "Op", "Degradation", "parse", "AUGMENT_PRESETS", "SweepPoint", "sweep", "SWEEP_PRESETS", "KINDS", "IDENTITY",
]

_STANDARD = "blur:sigma=0-3,p=0.5+jpeg:q=30-100,p=0.5"  # CNNDetection (Wang et al. 2020), "Blur+JPEG (0.5)"
AUGMENT_PRESETS: dict[str, str] = {
    "none": "",
    "standard": _STANDARD,
    # the CNNDetection recipe's ingredients at native-resolution strength: the blur that keeps
    # super-resolution traces visible (σ ≤ 1.5), a downscale, and JPEG; chosen in the recipe pilot
    # (benchmarks/recipe/, validation split) over none / standard / strong
    "mild": "resize:f=0.5-1,p=0.3+blur:sigma=0-1.5,p=0.3+jpeg:q=50-100,p=0.5",
    # resize first, then blur and noise, compression last (WebP, JPEG, a social upload: they can stack,
    # as re-shared images do; P(two or more compressions) ≈ 0.22)
    "strong": "resize:f=0.5-1,p=0.3+blur:sigma=0-3,p=0.5+noise:sigma=0-3,p=0.3+webp:q=50-100,p=0.2"
              "+jpeg:q=30-100,p=0.5+social:p=0.2",
}

SWEEP_PRESETS: dict[str, str] = {
    # Ojha et al. 2023 (UnivFD) robustness curves
    "univfd": ";".join([f"jpeg:q={q}" for q in range(100, 29, -10)] + [f"blur:sigma={s}" for s in range(0, 5)]),
    # SIDBench (Schinas & Papadopoulos 2024); the combined point blurs first and compresses last
    "sidbench": "jpeg:q=95;jpeg:q=90;jpeg:q=50;jpeg:q=30;blur:sigma=2;blur:sigma=4;blur:sigma=2+jpeg:q=50",
    # GenImage (Zhu et al. 2023) degraded-image evaluation
    "genimage": "jpeg:q=65;jpeg:q=30;blur:sigma=3;blur:sigma=5;resize:f=0.5;resize:f=0.25",
    "social": "social",
    "demo": "jpeg:q=95;jpeg:q=75;jpeg:q=50;blur:sigma=1;blur:sigma=2;resize:f=0.5;social",
}



@dataclass(frozen=True)
class _Param:
    """One parameter of a kind: numeric (``lo``..``hi`` allowed) or a choice of strings."""

    kind: str  # "int" | "float" | "choice"
    default: float | str | None = None  # None: required (unless the kind says otherwise)
    lo: float = 0.0
    hi: float = math.inf
    choices: tuple[str, ...] = ()
    lo_open: bool = False  # lo itself is not allowed (resize f > 0)


# kind -> parameters in canonical order (p is common to all and always last)
KINDS: dict[str, dict[str, _Param]] = {
    "jpeg": {"q": _Param("int", None, 1, 100), "sub": _Param("choice", "420", choices=tuple(_SUBSAMPLING))},
    "webp": {"q": _Param("int", None, 0, 100)},
    "blur": {"sigma": _Param("float", None, 0, 100)},
    "resize": {"f": _Param("float", None, 0, 16, lo_open=True), "long": _Param("int", None, 1, 1_000_000),
               "kernel": _Param("choice", "bicubic", choices=_RESIZE_KERNELS)},
    "noise": {"sigma": _Param("float", None, 0, 255)},
    "social": {},
    "window": {"side": _Param("int", None, 1, 1_000_000), "align": _Param("int", 1, 1, 4096)},
}
_REQUIRED = {"jpeg": ("q",), "webp": ("q",), "blur": ("sigma",), "noise": ("sigma",), "window": ("side",)}


@dataclass(frozen=True)
class Op:
    """One degradation step: ``kind``, its parameters (fixed, or ranged ``(lo, hi)`` = a uniform
    draw per image) in canonical order without defaults, and the probability ``p`` it is applied."""

    kind: str  # "jpeg" | "webp" | "blur" | "resize" | "noise" | "social" | "window"
    params: tuple[tuple[str, float | str | tuple[float, float]], ...] = ()
    p: float = 1.0

    @property
    def name(self) -> str:
        parts = [f"{k}={_fmt_value(v)}" for k, v in self.params]
        if self.p != 1.0:
            parts.append(f"p={_fmt_num(self.p)}")
        return self.kind + (":" + ",".join(parts) if parts else "")

    def get(self, key: str, default=None):
        for k, v in self.params:
            if k == key:
                return v
        return default

    @property
    def is_identity(self) -> bool:
        """Never changes an image: p = 0, or a fixed sigma 0 (blur, noise), or a fixed factor 1 (resize)."""
        if self.p <= 0:
            return True
        if self.kind in ("blur", "noise"):
            return self.get("sigma") == 0.0
        if self.kind == "resize":
            return self.get("f") == 1.0
        return False

    def draw(self, rng: np.random.Generator) -> dict[str, float | str]:
        """This step's parameters for one image (ranges drawn, in canonical key order)."""
        spec = KINDS[self.kind]
        out: dict[str, float | str] = {}
        for k, v in self.params:
            if isinstance(v, tuple):
                lo, hi = v
                if spec[k].kind == "int":
                    v = float(rng.integers(int(round(lo)), int(round(hi)) + 1))
                else:
                    v = float(rng.uniform(lo, hi))
            out[k] = v
        return out

    def apply(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Apply this step (after its probability draw) to ``img``."""
        if self.p <= 0:
            return img
        if self.p < 1 and rng.random() >= self.p:
            return img
        return _APPLY[self.kind](img, self.draw(rng), rng)


@dataclass(frozen=True)
class Degradation:
    """A chain of :class:`Op` applied in order; ``name`` is its canonical spec (``parse(d.name) == d``).

    ``d(img, rng)``: uint8 (H, W, 3) -> uint8 (H', W', 3), C-contiguous; ``img`` is never modified
    (it is returned itself when no step applies and it is already C-contiguous).
    """

    ops: tuple[Op, ...] = ()
    name: str = "none"

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = _check_image(img)
        for op in self.ops:
            img = op.apply(img, rng)
        return np.ascontiguousarray(img)

    @property
    def is_identity(self) -> bool:
        """True when no step can change an image (no steps, or every step a no-op)."""
        return all(op.is_identity for op in self.ops)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(op.kind for op in self.ops)


IDENTITY = Degradation((), "none")


# --------------------------------------------------------------------------------------- parsing

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NUM_RE = re.compile(_NUM)
_RANGE_RE = re.compile(rf"({_NUM})-({_NUM})")


def _fmt_num(x: float) -> str:
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def _fmt_value(v) -> str:
    if isinstance(v, tuple):
        return f"{_fmt_num(v[0])}-{_fmt_num(v[1])}"
    if isinstance(v, str):
        return v
    return _fmt_num(v)


def _parse_value(kind: str, key: str, text: str, param: _Param, token: str):
    where = f"{token!r}: {kind} {key}={text!r}"
    if param.kind == "choice":
        if text not in param.choices:
            raise ValueError(f"degradation {where}: choose one of {', '.join(param.choices)}")
        return text
    if _NUM_RE.fullmatch(text):
        lo = hi = float(text)
    elif (m := _RANGE_RE.fullmatch(text)) is not None:
        lo, hi = float(m.group(1)), float(m.group(2))
        if lo > hi:
            raise ValueError(f"degradation {where}: a range is lo-hi with lo <= hi")
    else:
        raise ValueError(f"degradation {where}: not a number or a range lo-hi")
    for x in (lo, hi):
        bad = x < param.lo or x > param.hi or (param.lo_open and x <= param.lo)
        if param.kind == "int" and not float(x).is_integer():
            raise ValueError(f"degradation {where}: must be a whole number")
        if bad:
            lo_b = "(" if param.lo_open else "["
            raise ValueError(f"degradation {where}: out of range {lo_b}{_fmt_num(param.lo)}, {_fmt_num(param.hi)}]")
    return lo if lo == hi else (lo, hi)


def _parse_op(token: str) -> Op:
    kind, sep, rest = token.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        if "," in kind or "=" in kind:
            raise ValueError(f"degradation {token!r}: write a step as kind:key=value,key=value "
                             f"(e.g. {kind.split(',')[0]}:p=0.5)")
        raise ValueError(f"unknown degradation {kind!r} in {token!r} (kinds: {', '.join(KINDS)}; "
                         f"presets: {', '.join(AUGMENT_PRESETS)})")
    spec = KINDS[kind]
    given: dict[str, object] = {}
    seen: set[str] = set()
    p = 1.0
    if sep:
        if not rest.strip():
            raise ValueError(f"degradation {token!r}: nothing after ':'")
        for item in rest.split(","):
            key, eq, text = item.partition("=")
            key, text = key.strip().lower(), text.strip()
            if not eq or not key or not text:
                raise ValueError(f"degradation {token!r}: bad parameter {item.strip()!r} (write key=value)")
            if key in seen:
                raise ValueError(f"degradation {token!r}: {key} given twice")
            seen.add(key)
            if key == "p":
                if not _NUM_RE.fullmatch(text) or not 0.0 <= float(text) <= 1.0:
                    raise ValueError(f"degradation {token!r}: p={text!r} must be a number in [0, 1]")
                p = float(text)
                continue
            if key not in spec:
                takes = ", ".join([*spec, "p"])
                raise ValueError(f"degradation {token!r}: unknown parameter {key!r} ({kind} takes {takes})")
            given[key] = _parse_value(kind, key, text, spec[key], token)
    for key in _REQUIRED.get(kind, ()):
        if key not in given:
            raise ValueError(f"degradation {token!r}: {kind} needs {key}= (e.g. {kind}:{key}=...)")
    if kind == "resize" and ("f" in given) == ("long" in given):
        raise ValueError(f"degradation {token!r}: resize needs exactly one of f= (factor) or long= (max long side)")
    params = tuple((k, given[k]) for k in spec if k in given and given[k] != spec[k].default)
    return Op(kind, params, p)


def parse(spec: str | Degradation | None) -> Degradation:
    """A spec string (see the module docstring) or preset name -> :class:`Degradation`.

    ``None``, ``""`` and ``"none"`` give the identity. A :class:`Degradation` is returned as is.
    Raises ``ValueError`` naming the bad part.
    """
    if spec is None:
        return IDENTITY
    if isinstance(spec, Degradation):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"a degradation spec is a string, got {type(spec).__name__}")
    ops: list[Op] = []
    text = spec.strip()
    if text:
        for token in text.split("+"):
            token = token.strip()
            if not token:
                raise ValueError(f"degradation {spec!r}: empty step (two '+' in a row, or one at an end)")
            low = token.lower()
            if low in AUGMENT_PRESETS:
                if AUGMENT_PRESETS[low]:
                    ops.extend(parse(AUGMENT_PRESETS[low]).ops)
                continue
            ops.append(_parse_op(token))
    name = "+".join(op.name for op in ops) or "none"
    return Degradation(tuple(ops), name)


# ------------------------------------------------------------------------------------ operations

_APPLY: dict[str, Callable[[np.ndarray, dict, np.random.Generator], np.ndarray]] = {
    "jpeg": _jpeg, "webp": _webp, "blur": _blur, "resize": _resize, "noise": _noise, "social": _social,
    "window": _window,
}


# ---------------------------------------------------------------------------------------- sweeps

@dataclass(frozen=True)
class SweepPoint:
    """One point of a robustness sweep."""

    family: str  # "clean", "jpeg", "blur", "resize", "webp", "noise", "social", "blur+jpeg", ...
    strength: float  # the x-axis value (quality, sigma, factor or long side); nan for a single-point family
    degradation: Degradation
    label: str  # "jpeg q75", "blur σ2", "resize ×0.5", "social", "clean"


_STRENGTH_KEY = {"jpeg": "q", "webp": "q", "blur": "sigma", "noise": "sigma", "resize": "f"}


def _op_label(op: Op) -> str:
    """A short label of one fixed step ('jpeg q75', 'blur σ2', 'resize ×0.5'); its spec otherwise."""
    if op.p != 1.0 or any(isinstance(v, tuple) for _, v in op.params):
        return op.name
    extra = "".join(f" {v}" for k, v in op.params if k in ("sub", "kernel"))
    if op.kind in ("jpeg", "webp"):
        return f"{op.kind} q{_fmt_num(op.get('q'))}{extra}"
    if op.kind in ("blur", "noise"):
        return f"{op.kind} σ{_fmt_num(op.get('sigma'))}"
    if op.kind == "resize":
        if op.get("long") is not None:
            return f"resize ≤{_fmt_num(op.get('long'))}{extra}"
        return f"resize ×{_fmt_num(op.get('f'))}{extra}"
    return op.kind


def _point(d: Degradation) -> SweepPoint:
    if not d.ops:
        return SweepPoint("clean", math.nan, d, "clean")
    family = "+".join(d.kinds)
    strength = math.nan
    if len(d.ops) == 1:
        op = d.ops[0]
        key = "long" if op.kind == "resize" and op.get("long") is not None else _STRENGTH_KEY.get(op.kind)
        v = op.get(key) if key else None
        if isinstance(v, float) and op.p == 1.0:
            strength = v
    return SweepPoint(family, strength, d, " + ".join(_op_label(op) for op in d.ops))


def sweep(spec: str) -> list[SweepPoint]:
    """A sweep preset name or a ``;``-separated list of specs (sweep preset names allowed as
    items) -> points, ``clean`` first, duplicates (by canonical name) dropped, order kept.

    An identity degradation other than the clean one (e.g. ``blur:sigma=0`` in ``univfd``) is
    kept as its own point — ``point.degradation.is_identity`` tells a caller it can reuse the
    clean result.
    """
    items: list[str] = []
    for item in (spec or "").split(";"):
        item = item.strip()
        if item.lower() in SWEEP_PRESETS:
            items.extend(x.strip() for x in SWEEP_PRESETS[item.lower()].split(";"))
        elif item:
            items.append(item)
    points = [_point(IDENTITY)]
    seen = {IDENTITY.name}
    for item in items:
        if item.lower() == "clean":
            continue
        d = parse(item)
        if d.name in seen:
            continue
        seen.add(d.name)
        points.append(_point(d))
    return points
