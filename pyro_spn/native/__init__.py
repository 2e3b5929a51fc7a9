"""An optional native kernel for the einsum layers on the CPU, built on first use with the host's C compiler.

:func:`bilinear` computes, for every group ``g``,

``out[g, a, n] = Σ_b P[g, b, n] · Σ_c M[g, a, b, c] · Q[g, c, n]``

in one pass (``bilinear.c``): the products of pairs ``P[b, n] · Q[c, n]`` that the PyTorch path materializes
never leave registers. It is the einsum layer's forward (``a`` output unit, ``b``/``c`` left/right child) and
both children's gradients (the same weights, permuted).

The source is compiled once per machine and source version with ``cc -O3 -march=native -fopenmp`` into
``$PYRO_SPN_CACHE_DIR`` (default ``~/.cache/pyro_spn``; a folder in the system's temporary one where that
cannot be written), loaded with :mod:`ctypes`, and checked against PyTorch
on a small random case before it is used. Without a working C compiler, or with ``PYRO_SPN_NATIVE=0`` set, or
if the check fails, :func:`available` is False and the layers use their PyTorch path (one warning says why,
unless the kernel was switched off).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("bilinear.c")

#: Set to ``0`` to never build or use the native kernel.
ENV_SWITCH = "PYRO_SPN_NATIVE"
#: Where built kernels are kept (default ``$XDG_CACHE_HOME/pyro_spn`` or ``~/.cache/pyro_spn``).
ENV_CACHE_DIR = "PYRO_SPN_CACHE_DIR"

#: Flag sets tried in turn: tuned for this CPU with OpenMP threads, then more portable ones.
_FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-mcpu=native", "-fopenmp"),
    ("-O3", "-fopenmp"),
    ("-O3", "-march=native"),  # compilers without OpenMP (Apple's clang): one thread
    ("-O3", "-mcpu=native"),
    ("-O3",),
)
_COMMON_FLAGS = ("-std=gnu11", "-shared", "-fPIC", "-Wno-unknown-pragmas")
_BUILD_TIMEOUT_S = 120
_KERNELS = {torch.float32: "bilinear_f32", torch.float64: "bilinear_f64"}

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_tried = False
_enabled = True


def cache_dir() -> Path:
    """The folder of built kernels."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyro_spn"


def available() -> bool:
    """Whether :func:`bilinear` runs (builds and checks the kernel on the first call)."""
    return _enabled and _load() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within this block :func:`available` is False, so the layers take their PyTorch path (for comparisons)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def bilinear(p: Tensor, q: Tensor, m: Tensor, out: Tensor | None = None) -> Tensor:
    """``out[g, a, n] = Σ_b p[g, b, n] Σ_c m[g, a, b, c] q[g, c, n]`` with the native kernel.

    Args:
        p: ``[G, B, N]``, ``q``: ``[G, C, N]``: CPU tensors of one dtype (float32 or float64) whose rows of
            ``N`` are contiguous (any group stride: views such as ``children[:, 0]`` are fine).
        m: ``[G, A, B, C]``, same dtype, any strides (a permuted view of the weights is read as it is).
        out: optional ``[G, A, N]`` with contiguous rows, written in place.

    Returns:
        ``out``, or a new ``[G, A, N]`` tensor.

    Raises:
        RuntimeError: if the kernel is not :func:`available`.
        ValueError: on shapes, dtypes, devices or layouts it does not take.
    """
    library = _load() if _enabled else None
    if library is None:
        raise RuntimeError("the native kernel is not available; check pyro_spn.native.available() first")
    return _run(library, p, q, m, out)


def _run(library: ctypes.CDLL, p: Tensor, q: Tensor, m: Tensor, out: Tensor | None) -> Tensor:
    """:func:`bilinear` with this library: check the arguments, then call the kernel."""
    if m.dim() != 4:
        raise ValueError(f"m must be [G, A, B, C], got shape {tuple(m.shape)}")
    groups, rows, num_left, num_right = m.shape
    num_samples = p.shape[-1]
    if out is None:
        out = p.new_empty(groups, rows, num_samples)
    expected = {"p": (groups, num_left, num_samples), "q": (groups, num_right, num_samples),
                "out": (groups, rows, num_samples)}
    for name, tensor in (("p", p), ("q", q), ("out", out)):
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]} for m of shape {tuple(m.shape)}, "
                             f"got {tuple(tensor.shape)}")
        if not _rows_contiguous(tensor):
            raise ValueError(f"{name} must have contiguous rows of {num_samples}, got strides {tensor.stride()}")
    for name, tensor in (("p", p), ("q", q), ("m", m), ("out", out)):
        if tensor.dtype not in _KERNELS or tensor.dtype != m.dtype:
            raise ValueError(f"{name} must be float32 or float64, like m; got {tensor.dtype} (m: {m.dtype})")
        if tensor.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU, got {tensor.device}")
    if out.numel() == 0:
        return out
    kernel = getattr(library, _KERNELS[m.dtype])
    failed = kernel(groups, rows, num_left, num_right, num_samples, p.data_ptr(), p.stride(0), q.data_ptr(),
                    q.stride(0), m.data_ptr(), *m.stride(), out.data_ptr(), out.stride(0), torch.get_num_threads())
    if failed:
        raise MemoryError("the native kernel could not allocate room for a partial tile")
    return out


def _rows_contiguous(tensor: Tensor) -> bool:
    """Whether ``[G, X, N]`` has rows of ``N`` one after another (the kernel's layout; size-1 dims are free)."""
    _, num_rows, num_samples = tensor.shape
    columns_ok = num_samples <= 1 or tensor.stride(2) == 1
    return tensor.numel() == 0 or columns_ok and (num_rows <= 1 or tensor.stride(1) == num_samples)


def _load() -> ctypes.CDLL | None:
    """The built, checked library, or None (tried once per process)."""
    global _library, _tried
    if _tried:
        return _library
    with _lock:
        if not _tried:
            _library = _build_and_check()
            _tried = True
    return _library


def _build_and_check() -> ctypes.CDLL | None:
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        library = _declare(ctypes.CDLL(str(_build())))
    except (OSError, RuntimeError) as error:
        warnings.warn(f"pyro_spn: the native einsum kernel is unavailable ({error}); the einsum layers use their "
                      f"slower PyTorch path. Set {ENV_SWITCH}=0 to silence this.", RuntimeWarning, stacklevel=3)
        return None
    problem = _self_check(library)
    if problem:
        warnings.warn(f"pyro_spn: the native einsum kernel failed its check ({problem}) and is not used.",
                      RuntimeWarning, stacklevel=3)
        return None
    return library


def _compiler() -> str:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate.split()[0]):
            return candidate
    raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")


def _machine_key() -> str:
    """What a build tuned with ``-march=native`` depends on: the architecture and the CPU's features."""
    parts = [platform.machine(), platform.system()]
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name", "CPU part")):
                parts.append(line)
                if len(parts) > 4:
                    break
    return "\n".join(parts)


def _build() -> Path:
    """Compile ``bilinear.c`` (or find it already compiled) and return the shared library's path."""
    compiler = _compiler()
    source, machine = SOURCE.read_bytes(), _machine_key().encode()
    errors = []
    for flags in _FLAG_SETS:
        command = [*compiler.split(), *flags, *_COMMON_FLAGS]
        key = hashlib.sha256(b"\0".join([source, " ".join(command).encode(), machine])).hexdigest()
        target = _writable_cache_dir() / f"bilinear-{key[:16]}.so"
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            built = Path(scratch) / target.name
            try:
                result = subprocess.run([*command, str(SOURCE), "-o", str(built)], capture_output=True, text=True,
                                        timeout=_BUILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                errors.append(f"{' '.join(flags)}: no result after {_BUILD_TIMEOUT_S} s")
                continue
            if result.returncode == 0:
                os.replace(built, target)  # atomic: concurrent builders all end with one whole file
                return target
        last_line = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        errors.append(f"{' '.join(flags)}: {last_line}")
    raise RuntimeError(f"{compiler} could not build {SOURCE.name}: " + "; ".join(errors))


def _writable_cache_dir() -> Path:
    """:func:`cache_dir`, created; or, where that cannot be written, a folder in the system's temporary one."""
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"pyro_spn-{getattr(os, 'getuid', lambda: 'user')()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise RuntimeError(f"cannot write to {cache_dir()} (set {ENV_CACHE_DIR} to a writable folder)")


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    i64, pointer = ctypes.c_int64, ctypes.c_void_p
    for name in _KERNELS.values():
        kernel = getattr(library, name)
        kernel.argtypes = [i64] * 5 + [pointer, i64, pointer, i64, pointer, i64, i64, i64, i64, pointer, i64,
                                       ctypes.c_int]
        kernel.restype = ctypes.c_int
    return library


def _self_check(library: ctypes.CDLL) -> str:
    """Compare the kernel with PyTorch on a small case with partial tiles and permuted weights; '' if it agrees."""
    generator = torch.Generator().manual_seed(0)
    for dtype in _KERNELS:
        p, q = (torch.rand(3, size, 37, generator=generator, dtype=dtype) for size in (4, 6))
        m = torch.rand(3, 6, 4, 7, generator=generator, dtype=dtype).transpose(1, 3)  # [3, 7, 4, 6], strided
        expected = torch.einsum("gbn,gabc,gcn->gan", p, m, q)
        got = _run(library, p, q, m, None)
        if not torch.allclose(got, expected, rtol=1e-5, atol=1e-5):
            return f"{dtype}: largest error {(got - expected).abs().max().item():.3g}"
    return ""
