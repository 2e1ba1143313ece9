"""Float32 matmuls on tensor cores at float32's accuracy, for the layer's GPU-bound shapes.

The fused route keeps float32 exact (1e-5 relative against float64, the tests' bound), so its
float32 matmuls ran in cuBLAS without TF32, on the CUDA cores: at (4096, 1024->1024) the three
products were 4.6 of the layer's 5.2 ms, and efficient-kan, which spends the same on its GEMMs,
stayed within 2.5x of us. `tf32x3_kernels` sums three TF32 products per tile instead (the
operands' TF32 parts and remainders), with the error of float32 rounding (H200: 2e-7 to 1e-6 of
the largest entry, cuBLAS float32 6e-7 to 2e-6, TF32 3e-4).

Hopper's TF32 tensor-core instructions read both operands with K adjacent in memory; any other
layout is transposed on the way and ran at half cuBLAS's speed, so the layer hands operands in
that layout (`layer_operand(..., transposed=True)` for the weight gradient). Where the product
has few output tiles for the GPU's SMs (small batches: the layer is bound by the host there
anyway) or the caller allowed TF32 (`torch.backends.cuda.matmul.allow_tf32`: cuBLAS's TF32 is
faster, and what was asked for), the layer keeps cuBLAS: `tiles` says which.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch

from kan_engine import fused_basis, triton_launch

__all__ = ["ENABLE_ENV", "Tiles", "allowed", "matmul", "row_major", "tiles"]

ENABLE_ENV = "KAN_TUI_TF32X3"  # "0" keeps cuBLAS float32 (A/B benchmarks)
MIN_WAVES = 1.5  # output tiles per SM below which cuBLAS is kept
MIN_FLOP = 2**33  # below this (8.6 GFLOP, 0.2 ms in cuBLAS float32) the layer is host-bound:
# the kernel's layout copies would cost more host time than its speed saves (H200, session 9)


class Tiles(NamedTuple):
    """One launch configuration of `tf32x3_kernels.matmul_kernel`."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# Fastest first (H200, K-major operands at the layer's products; swept in session 9)
CONFIGS = (Tiles(128, 64, 32, 4, 4), Tiles(64, 64, 64, 4, 3))


def allowed(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether products in `dtype` on `device` may take the kernel: float32 on CUDA with TF32
    tensor cores (or under Triton's interpreter: tests), TF32 not allowed to cuBLAS, not
    switched off, and not while torch.compile traces (Inductor relaunches user kernels itself;
    this one's string constexpr was never checked there, so compiled models keep cuBLAS). A
    layer asks once per forward, and its backward follows that answer."""
    if dtype != torch.float32 or os.environ.get(ENABLE_ENV, "1") == "0":
        return False
    if torch.compiler.is_compiling():
        return False
    if device.type == "cuda":
        return _tensor_cores(device) and not torch.backends.cuda.matmul.allow_tf32
    return os.environ.get(fused_basis.INTERPRET_ENV, "0") == "1"


def tiles(m: int, n: int, k: int, device: torch.device) -> Tiles | None:
    """The configuration for an (m, k) @ (k, n) product that `allowed` lets through, or None
    where cuBLAS should do it: too small, or too few output tiles for the SMs."""
    if 2 * m * n * k < MIN_FLOP:
        return None
    sms = _sm_count(device)
    for config in CONFIGS:
        if -(-m // config.block_m) * -(-n // config.block_n) >= MIN_WAVES * sms:
            return config
    return None


def matmul(
    a: torch.Tensor, b: torch.Tensor, config: Tiles, out: torch.Tensor | None = None,
    accumulate: bool = False,
) -> torch.Tensor:  # fmt: skip
    """a (m, k) @ b (k, n), float32, into `out` (added to it with `accumulate`); any strides,
    fastest with k adjacent in both."""
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = torch.empty(m, n, device=a.device, dtype=torch.float32)
    from kan_engine import tf32x3_kernels  # imports triton: only where it is there

    interpreting = a.device.type != "cuda"
    grid = (-(-m // config.block_m) * -(-n // config.block_n), 1)
    triton_launch.launch(
        tf32x3_kernels.matmul_kernel, grid,
        (a, b, out, m, n, k, *a.stride(), *b.stride(), *out.stride()),
        dict(BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, GROUP_M=8,
             ACCUMULATE=accumulate, PRECISION="tf32x3"),
        config.num_warps, interpreting, config.num_stages,
    )  # fmt: skip
    return out


def row_major(t: torch.Tensor) -> torch.Tensor:
    """A copy of the 2-D t whose rows each hold their elements adjacent and start at a multiple
    of 16 elements (a view of a padded buffer): the layout in which the kernel reads an A
    operand at speed, and, transposed, a B operand (K adjacent in both; rows that were not
    64-byte aligned ran at half speed on the H200)."""
    rows, cols = t.shape
    padded = torch.empty(rows, -(-cols // 16) * 16, device=t.device, dtype=t.dtype)
    view = padded[:, :cols]
    view.copy_(t)
    return view


@functools.cache
def _tensor_cores(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (8, 0)  # TF32 from Ampere on


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter: any product big enough takes the kernel (tests)
    return torch.cuda.get_device_properties(device).multi_processor_count
