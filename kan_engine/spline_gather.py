"""The CPU's spline matmuls over the non-zero basis values only: a C++ extension built on first use.

Only k+1 of the G+k basis values of an input are non-zero, so the dense route's three matmuls
(forward, dL/dC, dL/dx) do (G+k)/(k+1) times the multiply-adds that matter: 2x at G=5, k=3. At
(256, 1024->1024) those dense matmuls alone took 0.56x efficient-kan's fwd+bwd (2-core EPYC,
one thread), so no dense route could reach 0.5x there. `csrc/spline_gather.cpp` multiplies only
the k+1 values: per block of inputs the rows are bucketed by their interval, and every row of a
bucket meets the same k+1 weight rows, kept in registers. Its inner loops run over contiguous
outputs, so the weight is transposed once per forward to (in, G+k, out) and kept for the
backward, which writes each block's weight gradient back transposed. No dense basis is built;
the values come from de Boor's scheme on each input's own knots, exact on any grid (after
`update_grid` too).

Measured (bench/kan_layer.py, that EPYC, one thread, fwd+bwd, G=5, k=3; the box is shared, so
efficient-kan's own time varied 262-324 ms at the second shape between runs):

    shape              gathered   dense (KAN_TUI_GATHER=0)   efficient-kan
    1024, 784->256     100 ms     200 ms                     415 ms
    256, 1024->1024    132 ms     195 ms                     324 ms

When the layer takes it (`applies`), and why not otherwise:

* the CPU in float32 only: the kernels are float32. float64 keeps the dense route (the dtype of
  exactness checks and small fits, where speed matters less), and so does autocast (its bfloat16
  GEMMs are what autocast asks for);
* no explicit `chunk_size`: that asks for the dense route's row chunks, which bound the
  transient memory by rows; this route's buffers are O(N * (in + out')) (out' = out rounded up
  to 64) plus the transposed weight, bounded but not by rows;
* `KAN_TUI_GATHER=0` turns it off (A/B benchmarks), and it is off where the extension could not
  be built (`available()` says why): the layer then takes the dense route, same results.

No size threshold: at every shape measured, from (32, 2->5) and (512, 64->4) (4 outputs padded
to 64) to (4096, 3136->256), the route took 0.3-0.7x the dense route's fwd+bwd time.

The build (torch.utils.cpp_extension, ninja and the C++ compiler, about 30 s once per machine,
then cached in torch's extension folder under its file lock) happens on the first forward that
would take the route. The vector code is compiled for the CPU capability torch reports
(AVX-512, AVX2 or none), which is part of the extension's name, as is the Python environment,
so a cache folder shared by machines or virtual environments hands none of them another's build.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import torch

__all__ = [
    "BUILD_NOTICE",
    "ENABLE_ENV",
    "Availability",
    "SplineGather",
    "applies",
    "available",
    "build_pending",
    "dense_only",
    "enabled",
    "prepare",
]

ENABLE_ENV = "KAN_TUI_GATHER"  # "0" turns the gathered route off (A/B benchmarks)
BUILD_NOTICE = (
    "building the CPU's spline kernel, once per Python environment (about 30 s; "
    "`python -m kan_engine.spline_gather` builds it ahead)"
)
SOURCE = Path(__file__).parent / "csrc" / "spline_gather.cpp"
# Instruction sets per capability of torch.backends.cpu.get_cpu_capability(); the code is
# portable vector extensions, so another capability builds it with the compiler's defaults.
ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}

_BUILD_LOCK = threading.Lock()
_DENSE_ONLY: ContextVar[bool] = ContextVar("kan_tui_dense_only", default=False)
# A build takes ~30 s here; a build lock older than this was left by a killed build.
STALE_LOCK_SECONDS = 600


class Availability(NamedTuple):
    """Whether the extension is usable (truthy) and, if not, why not."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def enabled() -> bool:
    """Whether KAN_TUI_GATHER leaves the route on (anything but "0") and no `dense_only` block
    is running."""
    return not _DENSE_ONLY.get() and os.environ.get(ENABLE_ENV, "1") != "0"


@contextmanager
def dense_only() -> Iterator[None]:
    """The dense route for the forwards inside, in this thread: the memory estimate measures a
    training step on the CPU as an upper bound for any device, and the GPU's fused route keeps
    a basis-sized operand that this route never builds."""
    token = _DENSE_ONLY.set(True)
    try:
        yield
    finally:
        _DENSE_ONLY.reset(token)


def available() -> Availability:
    """Build and load the extension on the first call (later calls answer at once)."""
    return _load()[1]


def applies(
    x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, cdt: torch.dtype, order: int,
    chunk_size: int | None,
) -> bool:  # fmt: skip
    """Whether the layer's spline part should take this route (the module docstring's rule)."""
    if not (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == cdt == torch.float32
        and chunk_size is None
        and enabled()
    ):
        return False
    module, state = _load()
    return state.ok and order <= module.max_order and grid.shape[1] + 2 * order <= module.max_knots


@functools.cache
def _load() -> tuple[Any, Availability]:
    with _BUILD_LOCK:
        reason = _missing_tool()
        if reason:
            return None, Availability(False, reason)
        try:
            module = _build()
        except Exception as exc:  # any build or load failure: the layer keeps the dense route
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            return None, Availability(False, f"build failed: {lines[-1][:200]}")
        return module, Availability(True, "")


def _missing_tool() -> str:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler: {compiler!r} is not on PATH"
    if shutil.which("ninja") is None and _pip_ninja() is None:
        return "no ninja: neither on PATH nor the ninja package"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        return f"no Python headers: {headers} is missing (Debian: apt-get install python3-dev)"
    return ""


def _pip_ninja() -> str | None:
    """The folder of the ninja package's binary: installed into a virtual environment, it is not
    on PATH unless the environment is activated."""
    try:
        import ninja  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(ninja.BIN_DIR)


def build_pending(dtype: torch.dtype) -> bool:
    """Whether a CPU forward in `dtype` would build the extension first (~30 s): the route is
    on for it, this process has not loaded it, the tools are there, and torch's cache holds no
    build newer than the source. Asked before a run's first forward, to say why it waits."""
    if dtype != torch.float32 or not enabled() or _load.cache_info().currsize or _missing_tool():
        return False
    name = _extension_name()
    library = Path(_cpp_extension()._get_build_directory(name, verbose=False)) / f"{name}.so"
    try:
        return library.stat().st_mtime < SOURCE.stat().st_mtime
    except OSError:  # never built here
        return True


def prepare(model: torch.nn.Module, device: torch.device, notify: Callable[[str], None]) -> None:
    """Build the extension now, after `notify(BUILD_NOTICE)`, where `model`'s first forward on
    `device` would: about 30 s once per Python environment, which would otherwise pass in
    silence inside that forward. Runs and tools call it once their model is built."""
    weight = next(model.parameters(), None)
    if device.type == "cpu" and weight is not None and build_pending(weight.dtype):
        notify(BUILD_NOTICE)
        available()


def _cpp_extension() -> ModuleType:
    # torch.utils.cpp_extension warns at import when a CUDA build of torch finds no CUDA: not
    # news here (the extension is CPU code), and a warning would land in the TUI.
    extension_logger = logging.getLogger("torch.utils.cpp_extension")
    level = extension_logger.level
    extension_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        extension_logger.setLevel(level)
    return cpp_extension


def _extension_name() -> str:
    """The vector code's capability and the Python environment are part of the name: torch
    rebuilds when the compile command changes, and it names the environment's torch headers,
    so two virtual environments sharing the cache would rebuild each other's extension in turn."""
    environment = hashlib.sha256(sys.prefix.encode()).hexdigest()[:10]
    return f"kan_tui_spline_gather_{torch.backends.cpu.get_cpu_capability().lower()}_{environment}"


def _build() -> ModuleType:
    cpp_extension = _cpp_extension()
    capability = torch.backends.cpu.get_cpu_capability()
    # at::parallel_for is inline OpenMP code where torch is built with OpenMP: without the flag
    # it compiles to a serial loop
    openmp = ["-fopenmp"] if torch.backends.openmp.is_available() else []
    path = os.environ.get("PATH", "")
    ninja_dir = None if shutil.which("ninja") else _pip_ninja()
    if ninja_dir:
        os.environ["PATH"] = ninja_dir + os.pathsep + path
    name = _extension_name()
    clear_stale_lock(cpp_extension._get_build_directory(name, verbose=False))
    try:
        return cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=["-O3", *openmp, *ISA_FLAGS.get(capability, [])],
            extra_ldflags=openmp,
            verbose=False,
        )
    finally:
        if ninja_dir:
            os.environ["PATH"] = path


def clear_stale_lock(folder: str | Path) -> None:
    """Remove torch's build lock in `folder` when it is older than any build: the lock is a
    file that outlives a build killed outright (SIGKILL, a power cut), and torch then waits on
    it forever, so every later run would hang in its first forward."""
    lock = Path(folder) / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink()
    except OSError:  # no lock (the usual case), or another process removed it first
        pass


class SplineGather(torch.autograd.Function):
    """out = scale_base * base + scale_spline * B(x) @ C^T by the extension, float32 on the CPU.

    The forward saves x and the transposed weight (in, G+k, out'), not the basis: the backward
    recomputes the k+1 values and slopes per input, which costs less than reading a saved copy.
    `weight` is saved too, only so that autograd refuses a backward after the weight was changed
    in place (the transposed copy would be stale), as it does on the dense route. With
    `want_sum` there is a second output, the basis summed over the rows ((G+k)*in values, for
    the regulariser), as `kan._SplineLinear` gives it.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        base: torch.Tensor,
        weight: torch.Tensor,
        grid: torch.Tensor,
        order: int,
        scale_base: float,
        scale_spline: float,
        want_sum: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        module = _load()[0]
        x = x.contiguous()
        grid = grid.contiguous()
        out, col_sum, transposed = module.forward(
            x, base, weight.contiguous(), grid, order, scale_base, scale_spline, want_sum
        )
        ctx.save_for_backward(x, weight, transposed, grid)
        ctx.config = (order, scale_base, scale_spline)
        if not want_sum:
            return out
        ctx.mark_non_differentiable(col_sum)
        ctx.set_materialize_grads(False)  # no zeros for the sum's gradient, which is never used
        return out, col_sum.view(-1)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor | None, *_grad_sum: Any
    ) -> tuple[torch.Tensor | None, ...]:
        x, _weight, transposed, grid = ctx.saved_tensors
        if grad_out is None:  # only the sum was used
            return (None,) * 8
        order, scale_base, scale_spline = ctx.config
        need_x, need_base, need_w = ctx.needs_input_grad[:3]
        grad_base = None
        if need_base:
            grad_base = grad_out if scale_base == 1.0 else grad_out * scale_base
        grad_x, grad_w = _load()[0].backward(
            x, transposed, grid, grad_out, order, scale_spline, need_x, need_w
        )
        return grad_x, grad_base, grad_w, *(None,) * 5


def main() -> int:
    """`python -m kan_engine.spline_gather`: build the extension now (set-up scripts and CI,
    so that the first CPU run does not wait ~30 s in its first forward) and say whether it is
    usable. Exit 0 either way: the layer works without it."""
    state = available()
    print("spline_gather: ready" if state else f"spline_gather: not available ({state.reason})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
