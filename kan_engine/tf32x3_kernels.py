"""A Triton matmul whose float32 products run on tensor cores at float32's accuracy (imported
only with Triton).

`tl.dot(..., input_precision="tf32x3")` splits each float32 operand tile into a TF32 part and
the TF32 rounding of its remainder and sums the three products that matter (big*big, big*small,
small*big) in a float32 accumulator: the error of the dropped small*small term is about 2^-22
of each product, near float32's own rounding, at three TF32 products' cost. cuBLAS has no such
mode on Hopper (its float32 GEMMs without TF32 run on the CUDA cores), which left the layer's
float32 matmuls at a fraction of the tensor cores' rate.

C = A @ B (+ C with ACCUMULATE) for any strides, so the layer's transposed operands are read
in place. Program ids are grouped by GROUP_M rows of tiles, so that neighbouring programs share
their A tiles in L2. Offsets are 64-bit: the layer's operands reach 2^31 elements.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["matmul_kernel"]


@triton.jit
def matmul_kernel(
    a_ptr, b_ptr, c_ptr, M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ACCUMULATE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    # rows and columns beyond the ends read row/column 0 (stored nowhere): no mask in the loop
    safe_rows = tl.where(rows < M, rows, 0).to(tl.int64)
    safe_cols = tl.where(cols < N, cols, 0).to(tl.int64)
    a = a_ptr + safe_rows[:, None] * stride_am + ks[None, :].to(tl.int64) * stride_ak
    b = b_ptr + ks[:, None].to(tl.int64) * stride_bk + safe_cols[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, tl.cdiv(K, BLOCK_K)):
        left = K - step * BLOCK_K
        a_tile = tl.load(a, mask=ks[None, :] < left, other=0.0)
        b_tile = tl.load(b, mask=ks[:, None] < left, other=0.0)
        acc = tl.dot(a_tile, b_tile, acc, input_precision=PRECISION)
        a += BLOCK_K * stride_ak
        b += BLOCK_K * stride_bk
    c = c_ptr + rows[:, None].to(tl.int64) * stride_cm + cols[None, :].to(tl.int64) * stride_cn
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    if ACCUMULATE:
        acc += tl.load(c, mask=mask, other=0.0)
    tl.store(c, acc, mask=mask)
