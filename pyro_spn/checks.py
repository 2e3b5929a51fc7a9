"""Argument validation, in one place: every public entry point checks its arguments with these.

The rule everywhere: an argument of the wrong *type* (a string or a bool where a number is expected, a float
where an integer is, something that is not a module) raises ``TypeError``; an argument of the right type with a
bad *value* (out of range, not finite, an unknown name) raises ``ValueError``. Both name the argument and say
what is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from numbers import Integral, Real

from torch import nn

#: The largest integer a size argument may take (sizes beyond it cannot be allocated anyway).
MAX_INT = 2**62


def integer(name: str, value: object, minimum: int = 1, maximum: int = MAX_INT) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if not minimum <= int(value) <= maximum:
        bound = f"in [{minimum}, {maximum}]" if maximum < MAX_INT else f">= {minimum}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def number(name: str, value: object, *, minimum: float = -math.inf, maximum: float = math.inf,
           open_minimum: bool = False, open_maximum: bool = False) -> float:
    """``value`` as a finite ``float`` within the bounds (``open_*`` excludes a bound itself)."""
    low = "(" if open_minimum else "["
    high = ")" if open_maximum else "]"
    if math.isinf(minimum) and math.isinf(maximum):
        accepted = "a finite number"
    elif math.isinf(maximum):
        accepted = f"a finite number {'>' if open_minimum else '>='} {minimum:g}"
    elif math.isinf(minimum):
        accepted = f"a finite number {'<' if open_maximum else '<='} {maximum:g}"
    else:
        accepted = f"a number in {low}{minimum:g}, {maximum:g}{high}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be {accepted}, got {value!r}")
    value = float(value)
    too_low = value <= minimum if open_minimum else value < minimum
    too_high = value >= maximum if open_maximum else value > maximum
    if not math.isfinite(value) or too_low or too_high:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    return value


def positive(name: str, value: object) -> float:
    """``value`` as a finite ``float > 0``."""
    return number(name, value, minimum=0.0, open_minimum=True)


def non_negative(name: str, value: object) -> float:
    """``value`` as a finite ``float >= 0``."""
    return number(name, value, minimum=0.0)


def flag(name: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def choice(name: str, value: object, accepted: Collection[str]) -> str:
    """``value`` if it is one of the names ``accepted``."""
    if not isinstance(value, str) or value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(accepted)}; got {value!r}")
    return value


def event_shape(value: object, name: str = "event_shape", max_dims: int | None = 3) -> tuple[int, ...]:
    """``value`` (an int ``F`` or a sequence of positive ints) as a shape tuple of at most ``max_dims`` dims."""
    dims = "1 to 3" if max_dims == 3 else "at least 1" if max_dims is None else f"1 to {max_dims}"
    message = f"{name} must be a positive int or a tuple of {dims} positive ints, got {value!r}"
    if isinstance(value, Integral) and not isinstance(value, bool):
        items: tuple[object, ...] = (value,)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = tuple(value)
    else:
        raise TypeError(message)
    shape = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, Integral):
            raise TypeError(message)
        shape.append(int(item))
    if not shape or (max_dims is not None and len(shape) > max_dims) or min(shape) < 1:
        raise ValueError(message)
    if math.prod(shape) > MAX_INT:
        raise ValueError(f"{name}: {value!r} has more entries than can be allocated")
    return tuple(shape)


def betas(name: str, value: object) -> tuple[float, float]:
    """Adam's ``betas``: two numbers in ``[0, 1)``."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise TypeError(f"{name} must be two numbers in [0, 1), got {value!r}")
    first, second = (number(name, b, minimum=0.0, maximum=1.0, open_maximum=True) for b in value)
    return first, second


def trainable_module(name: str, value: object) -> nn.Module:
    """``value`` if it is an ``nn.Module`` with trainable parameters."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    if not any(p.requires_grad for p in value.parameters()):
        raise ValueError(f"{name} must have trainable parameters")
    return value
