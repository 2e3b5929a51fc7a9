"""Argument validation, in one place: every public entry point checks its arguments with these.

The rule everywhere: an argument of the wrong *type* (a string or a bool where a number is expected, a float
where an integer is, something that is not a module) raises ``TypeError``; an argument of the right type with a
bad *value* (out of range, not finite, an unknown name) raises ``ValueError``. Both name the argument and say
what is accepted.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Sequence
from numbers import Integral, Real

import torch
from torch import Tensor, nn

#: The largest integer a size argument may take (sizes beyond it cannot be allocated anyway).
MAX_INT = 2**62
#: The most values a sample-count argument may ask for in all (samples × values per sample): 1 GiB of float32.
MAX_SAMPLE_VALUES = 2**28
#: The smallest Gumbel-Softmax temperature: below it the relaxed selections' slopes (``∂(z/τ)/∂τ = −z/τ²``) overflow
#: float32 and gradients turn NaN (from about 1e-19; from about 1e-38 the samples too).
MIN_TEMPERATURE = 1e-6
#: The largest temperature (float32 holds it; beyond it every selection is uniform to float32 precision anyway).
MAX_TEMPERATURE = 1e30


def integer(name: str, value: object, minimum: int = 1, maximum: int = MAX_INT) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if not minimum <= int(value) <= maximum:
        bound = f">= {minimum}" if maximum == MAX_INT and value < minimum else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def sample_count(name: str, value: object, values_per_sample: int) -> int:
    """``value`` as a number of samples of ``values_per_sample`` values each, at most :data:`MAX_SAMPLE_VALUES`
    values in all (so that the samples fit in memory)."""
    limit = max(1, MAX_SAMPLE_VALUES // values_per_sample)
    count = integer(name, value)
    if count > limit:
        raise ValueError(f"{name} must be an integer in [1, {limit}] for samples of {values_per_sample} values (at "
                         f"most {MAX_SAMPLE_VALUES} values in all), got {value!r}")
    return count


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


def temperature(name: str, value: object) -> float:
    """``value`` as a ``float`` in ``[MIN_TEMPERATURE, MAX_TEMPERATURE]``."""
    return number(name, value, minimum=MIN_TEMPERATURE, maximum=MAX_TEMPERATURE)


def scalar_temperature(name: str, value: object) -> Tensor:
    """``value`` as a scalar tensor in ``[MIN_TEMPERATURE, MAX_TEMPERATURE]``: a number in the default dtype, an
    integer tensor in it too, a floating-point tensor as it is (keeping its gradient: a learned temperature)."""
    accepted = f"a number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], or a scalar tensor of one"
    if isinstance(value, Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be {accepted} (real), got a {value.dtype} tensor")
        tau = value if value.is_floating_point() else value.to(torch.get_default_dtype())
    elif isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be {accepted}, got {value!r}")
    else:
        tau = torch.tensor(float(value), dtype=torch.get_default_dtype())
    if tau.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(tau.shape)}")
    given = float(tau.detach().reshape(()))
    low, high = torch.tensor([MIN_TEMPERATURE, MAX_TEMPERATURE], dtype=tau.dtype).tolist()  # as the tensor holds them
    if not low <= given <= high:  # (NaN fails too)
        raise ValueError(f"{name} must be {accepted}, got {given!r}")
    return tau.reshape(())


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


def shape(name: str, value: object) -> torch.Size:
    """``value`` (a sequence of ints ``>= 0`` such as a ``torch.Size``: a sample or batch shape) as a ``torch.Size``."""
    message = f"{name} must be a sequence of integers >= 0, such as torch.Size([n]) or (n,), got {value!r}"
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(message)
    if any(isinstance(item, bool) or not isinstance(item, Integral) for item in value):
        raise TypeError(message)
    if any(int(item) < 0 for item in value):
        raise ValueError(message)
    return torch.Size(int(item) for item in value)


def allocatable(name: str, size: Sequence[int], dtype: torch.dtype, device: torch.device) -> None:
    """Raises ``ValueError`` naming ``name`` if a tensor of ``size`` could not be allocated on ``device``: more than
    :data:`MAX_INT` entries, or more bytes than the device has memory (where it can be read)."""
    entries = math.prod(size)
    needed = entries * torch.empty((), dtype=dtype).element_size()
    available = _device_memory(device)
    if entries > MAX_INT or (available is not None and needed > available):
        limit = "" if available is None else f" (this device has {available / 2**30:.3g} GiB)"
        raise ValueError(f"{name}: a tensor of shape {tuple(size)} would take {needed / 2**30:.3g} GiB{limit}; "
                         "ask for fewer values at a time")


def _device_memory(device: torch.device) -> int | None:
    """The bytes of memory of ``device`` (the machine's physical memory for the CPU), or None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type != "cpu" or not hasattr(os, "sysconf"):
        return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def real_tensor(name: str, value: object) -> Tensor:
    """``value`` if it is a ``torch.Tensor`` of real values (floating point, integer or bool; not complex)."""
    if not isinstance(value, Tensor) or value.is_complex():
        kind = f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"{name} must be a torch.Tensor of real values (floating point, integer or bool), got {kind}")
    return value


def no_infinity(name: str, value: Tensor) -> Tensor:
    """``value`` if none of its entries is ``±inf`` (NaN, a missing entry, is fine)."""
    if bool(torch.isinf(value).any()):
        raise ValueError(f"{name} must have finite entries (or NaN where missing); got ±inf, e.g. "
                         f"{value[torch.isinf(value)].flatten()[:3].tolist()}")
    return value


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


def json_object(text: str, prefix: str = "") -> dict:
    """The JSON object ``text`` holds; ``ValueError`` (its message starting with ``prefix``) for malformed JSON or a
    value that is not an object."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{prefix}not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{prefix}expected a JSON object, got {type(values).__name__}")
    return values
