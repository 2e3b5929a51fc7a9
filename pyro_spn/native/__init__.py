"""Optional native kernels on the CPU, built on first use with the host's C compiler into one shared library.

Every ``*.c`` file in this folder is compiled into that one library; :func:`library` returns it (built, trusted and
checked), so that a kernel's module declares the argument types of its own C functions. :func:`bilinear` computes,
for every group ``g``,

``out[g, a, n] = Σ_b P[g, b, n] · Σ_c M[g, a, b, c] · Q[g, c, n]``

in one pass (``bilinear.c``): the products of pairs ``P[b, n] · Q[c, n]`` that the PyTorch path materializes
never leave registers. It is the einsum layer's forward (``a`` output unit, ``b``/``c`` left/right child) and
both children's gradients (the same weights, permuted).

The sources are compiled once per machine and source version with ``cc -O3 -march=native -fopenmp`` into the
package's cache folder (:func:`pyro_spn.folders.cache_dir`: ``$PYRO_SPN_CACHE_DIR``, default
``~/.cache/pyro_spn``; a folder ``pyro_spn-<uid>`` in the system's temporary one where that cannot be used),
loaded with :mod:`ctypes`, and checked against PyTorch on a small random case before it is used.

Only a library this user built is loaded: the folder must be private (created with mode ``0700``; owned by this
user, writable by no one else) and the file owned by this user and writable by no one else
(:mod:`pyro_spn.folders`); a build goes to a fresh private temporary file that is renamed into place
(:mod:`pyro_spn.atomic`). A folder that fails these checks is not used (a warning says why). Without a working C
compiler, or with ``PYRO_SPN_NATIVE=0`` set, or if the check fails, :func:`available` is False and the layers use
their PyTorch path (one warning says why, unless the kernel was switched off).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
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

from .. import atomic, folders

#: The folder of the C sources: every ``*.c`` file in it goes into the one library.
SOURCE_DIR = Path(__file__).parent

#: Set to ``0`` to never build or use the native kernels.
ENV_SWITCH = "PYRO_SPN_NATIVE"
#: Where built libraries are kept (see :func:`pyro_spn.folders.cache_dir`).
ENV_CACHE_DIR = folders.ENV_CACHE_DIR

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
_LIBRARY_MODE = 0o700
_KERNELS = {torch.float32: "bilinear_f32", torch.float64: "bilinear_f64"}

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_tried = False
_enabled = True


class _BuildError(RuntimeError):
    """One flag set did not build (the reason is the message)."""


def sources() -> list[Path]:
    """The C sources compiled into the library: every ``*.c`` file of :data:`SOURCE_DIR`, sorted by name."""
    return sorted(SOURCE_DIR.glob("*.c"))


def cache_dir() -> Path | None:
    """The folder of built libraries, :func:`pyro_spn.folders.cache_dir` (``None`` without a home folder)."""
    return folders.cache_dir()


def library() -> ctypes.CDLL | None:
    """The native library (built from every source on the first call, trusted, and checked), or ``None`` where it
    is unavailable or inside :func:`disabled`. A kernel's module declares its own functions' ``argtypes`` on it."""
    return _load() if _enabled else None


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
    loaded = library()
    if loaded is None:
        raise RuntimeError("the native kernel is not available; check pyro_spn.native.available() first")
    return _run(loaded, p, q, m, out)


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
        loaded = _declare(_open_trusted(_build()))
    except (OSError, RuntimeError) as error:
        warnings.warn(f"pyro_spn: the native einsum kernel is unavailable ({error}); the einsum layers use their "
                      f"slower PyTorch path. Set {ENV_SWITCH}=0 to silence this.", RuntimeWarning, stacklevel=4)
        return None
    problem = _self_check(loaded)
    if problem:
        warnings.warn(f"pyro_spn: the native einsum kernel failed its check ({problem}) and is not used.",
                      RuntimeWarning, stacklevel=4)
        return None
    return loaded


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
    """Compile every source into the library (or find it already compiled and trusted) and return its path."""
    compiler, files = _compiler(), sources()
    contents = b"\0".join(part for path in files for part in (path.name.encode(), path.read_bytes()))
    folder, machine = _private_cache_dir(), _machine_key().encode()
    errors = []
    for flags in _FLAG_SETS:
        command = [*compiler.split(), *flags, *_COMMON_FLAGS]
        key = hashlib.sha256(b"\0".join([contents, " ".join(command).encode(), machine]))
        target = folder / f"pyro_spn-{key.hexdigest()[:16]}.so"
        if target.exists() and not folders.file_problem(target):
            return target
        try:  # an untrusted file of that name (another user's, or writable by others) is replaced
            atomic.write_atomically(target, functools.partial(_compile, command, files), mode=_LIBRARY_MODE)
        except _BuildError as error:
            errors.append(f"{' '.join(flags)}: {error}")
            continue
        return target
    raise RuntimeError(f"{compiler} could not build {', '.join(path.name for path in files)}: " + "; ".join(errors))


def _compile(command: list[str], files: list[Path], output: Path) -> None:
    """Runs the compiler ``command`` on ``files`` into ``output``; :class:`_BuildError` (its last line) on failure."""
    try:
        result = subprocess.run([*command, *map(str, files), "-o", str(output)], capture_output=True, text=True,
                                timeout=_BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise _BuildError(f"no result after {_BUILD_TIMEOUT_S} s") from None
    if result.returncode != 0:
        raise _BuildError((result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1])


def _private_cache_dir() -> Path:
    """The cache folder, created private; or, where it cannot be used, ``pyro_spn-<uid>`` in the system's temporary
    folder. A folder that is not private (see :mod:`pyro_spn.folders`) is skipped with a warning."""
    user = getattr(os, "getuid", lambda: "user")()
    configured = folders.cache_dir()
    candidates = [folder for folder in (configured, Path(tempfile.gettempdir()) / f"pyro_spn-{user}") if folder]
    problems = []
    for folder in candidates:
        try:
            return folders.private_folder(folder)
        except folders.UnsafeFolderError as error:
            warnings.warn(f"pyro_spn: not building the native kernel in {error} (only a private folder of this "
                          f"user is trusted)", RuntimeWarning, stacklevel=5)
            problems.append(str(error))
        except OSError as error:
            problems.append(f"{folder}: {error.strerror or error}")
    raise RuntimeError(f"no private folder to build in ({'; '.join(problems)}); set {ENV_CACHE_DIR} to a folder "
                       f"of yours that only you can write to")


def _open_trusted(path: Path) -> ctypes.CDLL:
    """Loads the library ``path`` if this user wrote it (:func:`pyro_spn.folders.file_problem`)."""
    problem = folders.file_problem(path)
    if problem:
        raise RuntimeError(f"not loading {path}: {problem}")
    return ctypes.CDLL(str(path))


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
