"""Argument checks shared by the nets."""

from __future__ import annotations

from collections.abc import Sequence


def positive_int(name: str, value: int) -> int:
    """``value`` if it is an integer ``>= 1``; a ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def event_shape_of(event_shape: int | Sequence[int]) -> tuple[int, ...]:
    """``event_shape`` as a tuple of positive ints (an int ``F`` is ``(F,)``)."""
    message = f"event_shape must be a positive int or a tuple of positive ints, got {event_shape!r}"
    try:
        shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    except TypeError:
        raise ValueError(message) from None
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(message)
    return shape
