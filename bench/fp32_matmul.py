"""The layer's three float32 products: cuBLAS float32, cuBLAS TF32 and `tf32x3`, time and error.

For each shape (batch, in -> out) with G+k = 8 basis functions, the products of the fused route
in the layouts the layer hands them (`kan_engine.fused_layer`): forward operand @ weight,
dL/dW = dOut^T @ operand (operand transposed, as the backward rebuilds it for the kernel) and
dL/dOperand = dOut @ weight (the weight copied with the outputs adjacent). Per product: the
median ms of `--reps` CUDA-event timings, the error of the largest entry against float64 (the
bound the tests hold float32 to is 1e-5), and which tiles `tf32x3.tiles` picks (None: the layer
keeps cuBLAS). Plain TF32 is shown for scale: faster, but ~3e-4, which the layer never uses
unless `torch.backends.cuda.matmul.allow_tf32` asks for it.

    python3 bench/fp32_matmul.py --shapes 4096x1024x1024,4096x3136x256
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from kan_engine import tf32x3

SHAPES = ("4096x1024x1024", "4096x3136x256", "1024x784x256")


def median_ms(run: Callable[[], object], reps: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).abs().max() / ref.abs().max())


def products(n: int, n_in: int, n_out: int, device: torch.device) -> dict[str, tuple]:
    """(a, b) of each product, in the layer's layouts."""
    width = 9 * n_in  # [silu | 8 basis functions] x inputs
    operand = torch.rand(n, width, device=device) * 2 - 1
    weight = torch.randn(n_out, width, device=device) / width**0.5  # joined (out, width)
    grad = torch.randn(n, n_out, device=device)
    return {
        "forward": (operand, weight.t()),
        "dL/dW": (tf32x3.row_major(grad.t()), tf32x3.row_major(operand.t()).t()),
        "dL/dOperand": (grad, tf32x3.row_major(weight.t()).t()),
    }


def row(a: torch.Tensor, b: torch.Tensor, device: torch.device, reps: int) -> str:
    """The printed cells of one product: each way's ms and error, the ratio, the tiles."""
    ref = a.double() @ b.double()
    allow = torch.backends.cuda.matmul.allow_tf32
    cells = []
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        cells.append((median_ms(lambda: a @ b, reps), error(a @ b, ref)))
    torch.backends.cuda.matmul.allow_tf32 = allow
    tiles = tf32x3.tiles(a.shape[0], b.shape[1], a.shape[1], device)
    config = tiles or tf32x3.CONFIGS[0]  # timed even where the layer keeps cuBLAS
    out = torch.empty(a.shape[0], b.shape[1], device=device)
    kernel = median_ms(lambda: tf32x3.matmul(a, b, config, out), reps)
    cells.append((kernel, error(out, ref)))
    text = " ".join(f"{ms:7.3f} ({err:.0e})" for ms, err in cells)
    return f"{text} {kernel / cells[0][0]:6.2f}  {tiles}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated BxINxOUT")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("fp32_matmul: needs CUDA (the kernel is for tensor cores)")
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    print(f"{name}; torch {torch.__version__}; ms, median of {args.reps}; error vs float64")
    print(f"{'shape':>15} {'product':>12} {'cublas fp32':>16} {'cublas tf32':>16} "
          f"{'tf32x3':>16} {'ratio':>6}  tiles")  # fmt: skip
    for shape in args.shapes.split(","):
        n, n_in, n_out = (int(part) for part in shape.split("x"))
        for product, (a, b) in products(n, n_in, n_out, device).items():
            print(f"{shape:>15} {product:>12} {row(a, b, device, args.reps)}", flush=True)


if __name__ == "__main__":
    main()
