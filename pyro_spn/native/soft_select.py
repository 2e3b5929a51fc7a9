"""The fused soft-selection kernel (``soft_select.c``): Gumbel-Softmax selections of sum units with counter-based
noise, recomputed in the backward instead of stored.

For ``s [N, G, K]``, ``logw [G, K, Q]`` (or ``None``: zeros), ``bias [N, G, Q]`` (or ``None``), ``inv_tau = 1 / τ``
and a 64-bit ``seed``:

``pairs[n, g] = Σ_k s[n, g, k] · softmax((logw[g, k] + bias[n, g] + gumbel(seed, n, g, k)) · inv_tau)``.

:func:`forward` and :func:`backward` run it; :func:`gumbel` returns the very noise they draw, so that a plain
PyTorch reference can be given the same noise in tests. All tensors are CPU tensors of one dtype, float32 or
float64; ``logw`` is contiguous, ``s``, ``bias`` and the output have contiguous rows (of ``K`` or ``Q``) and any strides
over ``n`` and ``g`` (``output`` takes ``bias``'s layout where given, so that a ``[G, N, Q]`` layout needs no copy). The
library comes from :func:`pyro_spn.native.library` (``None`` where it is unavailable).
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from . import library

_SUFFIXES = {torch.float32: "f32", torch.float64: "f64"}
_declared: set[int] = set()


def supports(*tensors: Tensor | None) -> bool:
    """Whether the kernel takes these tensors (CPU, float32 or float64, one dtype) and the library is built."""
    present = [t for t in tensors if t is not None]
    dtypes = {t.dtype for t in present}
    return (len(dtypes) == 1 and next(iter(dtypes)) in _SUFFIXES and all(t.device.type == "cpu" for t in present)
            and _library() is not None)


def _library() -> ctypes.CDLL | None:
    """The library with this kernel's functions declared; ``None`` if it is unavailable or lacks them."""
    lib = library()
    if lib is None or not hasattr(lib, "soft_select_forward_f32"):
        return None
    if id(lib) not in _declared:
        i64, pointer, u64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_uint64
        for suffix, scalar in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
            forward = getattr(lib, f"soft_select_forward_{suffix}")
            forward.argtypes = [i64] * 4 + [pointer, i64, i64, pointer, pointer, i64, i64, scalar, u64, pointer, i64,
                                            i64, ctypes.c_int]
            backward = getattr(lib, f"soft_select_backward_{suffix}")
            backward.argtypes = [i64] * 4 + [pointer, i64, i64, pointer, pointer, i64, i64, scalar, u64, pointer, i64,
                                             i64, pointer, pointer, pointer, pointer, ctypes.c_int]
            noise = getattr(lib, f"soft_select_gumbel_{suffix}")
            noise.argtypes = [i64] * 4 + [u64, pointer]
            for function in (forward, backward, noise):
                function.restype = ctypes.c_int
        _declared.add(id(lib))
    return lib


def _pointer(t: Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _strides(t: Tensor | None) -> tuple[int, int]:
    """The strides over ``n`` and ``g`` of ``[N, G, X]`` (``(0, 0)`` for ``None``)."""
    return (0, 0) if t is None else (t.stride(0), t.stride(1))


def _rows(like: Tensor, rows: int) -> Tensor:
    """An empty ``[N, G, rows]`` tensor with ``like``'s ``n``/``g`` layout (``[G, N, ·]`` memory stays so)."""
    if like.dim() == 3 and like.stride(0) < like.stride(1):  # g-major
        return like.new_empty(like.shape[1], like.shape[0], rows).transpose(0, 1)
    return like.new_empty(like.shape[0], like.shape[1], rows)


def _checked(s: Tensor, logw: Tensor | None, bias: Tensor | None) -> tuple[ctypes.CDLL, str, int]:
    """The library, the dtype's suffix and ``Q``, after checking shapes and layouts."""
    lib = _library()
    if lib is None or not supports(s, logw, bias):
        raise RuntimeError("the native soft-selection kernel does not take these tensors (or is not built)")
    num_samples, groups, units = s.shape
    if logw is None and bias is None:
        raise ValueError("logw and bias cannot both be None")
    num_pairs = (logw if logw is not None else bias).shape[-1]  # type: ignore[union-attr]
    if logw is not None and tuple(logw.shape) != (groups, units, num_pairs):
        raise ValueError(f"logw must have shape {(groups, units, num_pairs)}, got {tuple(logw.shape)}")
    if bias is not None and tuple(bias.shape) != (num_samples, groups, num_pairs):
        raise ValueError(f"bias must have shape {(num_samples, groups, num_pairs)}, got {tuple(bias.shape)}")
    if logw is not None and not logw.is_contiguous():
        raise ValueError("logw must be contiguous")
    for name, t in (("s", s), ("bias", bias)):
        if t is not None and t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(f"{name} must have contiguous rows, got strides {t.stride()}")
    return lib, _SUFFIXES[s.dtype], num_pairs


def forward(s: Tensor, logw: Tensor | None, bias: Tensor | None, inv_tau: float, seed: int) -> Tensor:
    """``pairs [N, G, Q]`` (see the module docstring)."""
    lib, suffix, num_pairs = _checked(s, logw, bias)
    pairs = _rows(s if bias is None else bias, num_pairs)
    if pairs.numel() == 0:
        return pairs.zero_()
    failed = getattr(lib, f"soft_select_forward_{suffix}")(
        *s.shape, num_pairs, _pointer(s), *_strides(s), _pointer(logw), _pointer(bias), *_strides(bias), inv_tau,
        seed, _pointer(pairs), *_strides(pairs), torch.get_num_threads())
    if failed:
        raise MemoryError("the soft-selection kernel could not allocate its row buffers")
    return pairs


def backward(s: Tensor, logw: Tensor | None, bias: Tensor | None, inv_tau: float, seed: int, grad_pairs: Tensor,
             needs: tuple[bool, bool, bool, bool]) -> tuple[Tensor | None, Tensor | None, Tensor | None, float]:
    """Gradients of ``s``, ``logw``, ``bias`` (each where ``needs`` asks for it) and of ``inv_tau`` for
    ``grad_pairs [N, G, Q]``."""
    lib, suffix, num_pairs = _checked(s, logw, bias)
    if grad_pairs.stride(-1) != 1:
        grad_pairs = grad_pairs.contiguous()
    grad_s = _rows(s, s.shape[-1]) if needs[0] else None
    grad_logw = torch.zeros_like(logw) if needs[1] and logw is not None else None
    grad_bias = _rows(bias, num_pairs) if needs[2] and bias is not None else None
    grad_inv_tau = (ctypes.c_double * 1)(0.0)
    if grad_pairs.numel() > 0:
        bias_layout = _strides(bias)
        if grad_bias is not None and _strides(grad_bias) != bias_layout:
            raise AssertionError("grad_bias must share bias's layout")
        if grad_s is not None and _strides(grad_s) != _strides(s):
            raise AssertionError("grad_s must share s's layout")
        failed = getattr(lib, f"soft_select_backward_{suffix}")(
            *s.shape, num_pairs, _pointer(s), *_strides(s), _pointer(logw), _pointer(bias), *bias_layout, inv_tau,
            seed, _pointer(grad_pairs), *_strides(grad_pairs), _pointer(grad_s), _pointer(grad_logw),
            _pointer(grad_bias), ctypes.cast(grad_inv_tau, ctypes.c_void_p) if needs[3] else None,
            torch.get_num_threads())
        if failed:
            raise MemoryError("the soft-selection kernel could not allocate its row buffers")
    elif grad_s is not None:
        grad_s.zero_()
    return grad_s, grad_logw, grad_bias, grad_inv_tau[0]


def gumbel(shape: tuple[int, int, int, int], seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The Gumbel noise ``[N, G, K, Q]`` that :func:`forward` and :func:`backward` draw for ``seed``."""
    lib = _library()
    if lib is None or dtype not in _SUFFIXES:
        raise RuntimeError("the native soft-selection kernel is not built (or does not take this dtype)")
    noise = torch.empty(shape, dtype=dtype)
    if noise.numel() > 0 and getattr(lib, f"soft_select_gumbel_{_SUFFIXES[dtype]}")(*shape, seed, _pointer(noise)):
        raise MemoryError("the soft-selection kernel could not allocate its row buffer")
    return noise
