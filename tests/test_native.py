"""The native bilinear kernel: values against torch.einsum on every kind of tile (full, partial rows, partial
columns, strided weights and group-strided views), argument checks, and the build: from scratch in a fresh
cache, the switch that turns it off, and the fallback with a warning when no compiler works."""

import ctypes
import os
import platform
import shutil
import subprocess
import sys

import pytest
import torch

from pyro_spn import native

HAS_COMPILER = any(map(shutil.which, (os.environ.get("CC") or "cc", "gcc", "clang")))


@pytest.fixture(autouse=True)
def built():
    """Where there is a C compiler the kernel must build: fail, not skip, if it did not."""
    if not HAS_COMPILER:
        pytest.skip("no C compiler")
    assert native.available(), "the native kernel did not build"


def einsum_reference(p, q, m):
    return torch.einsum("gbn,gabc,gcn->gan", p.double(), m.double(), q.double()).to(p.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 20, 20, 20, 128), (2, 7, 5, 3, 37), (4, 1, 20, 20, 128), (1, 11, 2, 9, 1),
                                   (5, 16, 3, 4, 64), (2, 3, 4, 5, 200)],
                         ids=lambda s: "G{}-A{}-B{}-C{}-N{}".format(*s))
def test_matches_einsum(shape, dtype):
    groups, rows, num_left, num_right, num_samples = shape
    g = torch.Generator().manual_seed(sum(shape))
    p = torch.rand(groups, num_left, num_samples, generator=g, dtype=dtype)
    q = torch.rand(groups, num_right, num_samples, generator=g, dtype=dtype)
    m = torch.rand(groups, rows, num_left, num_right, generator=g, dtype=dtype)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(native.bilinear(p, q, m), einsum_reference(p, q, m), rtol=rtol, atol=0)


def test_views_permuted_weights_and_out():
    """Left and right children as views of one ``[G, 2, K, N]`` tensor, weights permuted as in the backward, and
    the result written into a view of a bigger tensor."""
    children = torch.rand(6, 2, 5, 40, dtype=torch.float64)
    weights = torch.rand(6, 3, 5, 5, dtype=torch.float64)  # [G, k, i, j]
    m = weights.permute(0, 2, 3, 1)  # [G, i, j, k]
    g = torch.rand(6, 3, 40, dtype=torch.float64)
    out = torch.zeros(6, 2, 5, 40, dtype=torch.float64)
    native.bilinear(children[:, 1], g, m, out=out[:, 0])
    expected = torch.einsum("gjn,gkij,gkn->gin", children[:, 1], weights, g)
    assert torch.allclose(out[:, 0], expected, rtol=1e-12)
    assert (out[:, 1] == 0).all()


def test_empty():
    p, q, m = torch.rand(2, 3, 0), torch.rand(2, 4, 0), torch.rand(2, 5, 3, 4)
    assert native.bilinear(p, q, m).shape == (2, 5, 0)


@pytest.mark.parametrize(("change", "message"), [
    (lambda p, q, m: (p[:, :2], q, m), "p must have shape"),
    (lambda p, q, m: (p, q.transpose(1, 2).contiguous().transpose(1, 2), m), "q must have contiguous rows"),
    (lambda p, q, m: (p.half(), q, m), "p must be float32 or float64"),
    (lambda p, q, m: (p, q.double(), m), "q must be float32 or float64, like m"),
    (lambda p, q, m: (p, q, m[0]), r"m must be \[G, A, B, C\]"),
])
def test_bad_arguments(change, message):
    p, q, m = torch.rand(2, 3, 8), torch.rand(2, 4, 8), torch.rand(2, 5, 3, 4)
    with pytest.raises(ValueError, match=message):
        native.bilinear(*change(p, q, m))


def test_disabled_block():
    with native.disabled():
        assert not native.available()
        with pytest.raises(RuntimeError, match="not available"):
            native.bilinear(torch.rand(1, 1, 1), torch.rand(1, 1, 1), torch.rand(1, 1, 1, 1))
    assert native.available()


def _run_fresh(tmp_path, **env):
    """``available()`` and the warnings (stdout, stderr) of a new process with an empty cache and these
    environment variables."""
    code = ("import warnings; warnings.simplefilter('always'); from pyro_spn import native; "
            "print(native.available())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYRO_SPN_CACHE_DIR": str(tmp_path / "cache"), **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), result.stderr


def test_builds_from_scratch_into_the_cache(tmp_path):
    available, warned = _run_fresh(tmp_path)
    assert available == "True", warned
    assert [path.suffix for path in (tmp_path / "cache").iterdir()] == [".so"]


def test_unwritable_cache_falls_back_to_the_temporary_folder(tmp_path):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "tmp").mkdir()
    available, warned = _run_fresh(tmp_path, PYRO_SPN_CACHE_DIR=str(tmp_path / "a-file" / "cache"),
                                   TMPDIR=str(tmp_path / "tmp"))
    assert available == "True", warned
    [folder] = (tmp_path / "tmp").iterdir()
    assert folder.name.startswith("pyro_spn-") and [p.suffix for p in folder.iterdir()] == [".so"]


def test_switched_off_by_environment(tmp_path):
    available, warned = _run_fresh(tmp_path, PYRO_SPN_NATIVE="0")
    assert available == "False"
    assert "native" not in warned
    assert not (tmp_path / "cache").exists()


def test_falls_back_with_a_warning_without_a_compiler(tmp_path):
    available, warned = _run_fresh(tmp_path, CC="/nonexistent/cc", PATH=str(tmp_path))
    assert available == "False"
    assert "native einsum kernel is unavailable" in warned and "no C compiler found" in warned


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction-set variants")
@pytest.mark.parametrize("flags", [["-mno-avx512f"], ["-mno-avx"]], ids=["avx2-tiles", "sse-tiles"])
def test_other_instruction_sets_build_and_agree(tmp_path, flags):
    """The same sources compiled without AVX-512 (3-row tiles of 8-float vectors) and without AVX (4-float
    vectors) gives the same values: the tile code that other machines run."""
    compiler = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc") or shutil.which("clang")
    target = tmp_path / "variant.so"
    result = subprocess.run([compiler, *native._FLAG_SETS[0], *flags, *native._COMMON_FLAGS,
                             *map(str, native.sources()), "-o", str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"this compiler cannot build the variant: {result.stderr.strip()[-200:]}")
    library = native._declare(ctypes.CDLL(str(target)))
    g = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.float64):
        p, q = torch.rand(3, 20, 100, generator=g, dtype=dtype), torch.rand(3, 20, 100, generator=g, dtype=dtype)
        m = torch.rand(3, 20, 20, 20, generator=g, dtype=dtype).permute(0, 2, 3, 1)
        got = native._run(library, p, q, m, None)
        assert torch.allclose(got, einsum_reference(p, q, m), rtol=1e-5 if dtype == torch.float32 else 1e-12)
