"""Is the basis GEMM route (`kan_engine.basis_gemm`) exact on the GPU, and how fast is it beside
today's fused route? (CUDA only: Triton's interpreter runs the same kernels on the CPU in
tests/unit/test_basis_gemm.py.)

1. Exactness at each shape, on a uniform and on a refit grid: today's fused route and the basis
   GEMM route, float32 and bf16 autocast, against the textbook reference in float64. Errors are
   max |ours - ref| / max |ref| of the output and the three gradients; float32 must stay within
   1e-5 (the tests' bound), bf16 is printed beside today's route. Each basis GEMM line says which
   path its kernels took: uniform (closed form) or general (search and de Boor).
2. ms per forward and per forward+backward of both routes, eager (median of --reps, synchronised:
   launch overhead included) and replayed from a CUDA graph, with the peak extra memory and the
   dense GEMM floor of bench/kan_layer.py. Those layers are fresh: uniform grids.
3. ms of each basis GEMM kernel alone (triton.testing.do_bench), on both paths (the same
   uniform grid; the general path searches it).
4. --sweep: alternative block sizes of each kernel (and K splits of the forward) on the
   --sweep-path (default uniform), best first, to choose `basis_gemm.TILES`; a candidate that
   does not compile or fit is reported and skipped. Stages are as `basis_gemm.pipeline_stages`
   lowers them.
5. --fp64: the three kernels in float64 on the device against the reference basis (whether
   Triton lowers a float64 tl.dot there; the layer keeps today's route for float64 until then).

    python bench/basis_gemm_check.py
    python bench/basis_gemm_check.py --shapes 4096x3136x256 --precisions bf16 --sweep --no-exactness
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from contextlib import nullcontext

import torch
from kan_layer import measure_shape, parse_shape

from kan_engine import basis_gemm
from kan_engine.bspline import reference_basis
from kan_engine.kan import KANLinear

SHAPES = ("1024x784x256", "4096x3136x256", "4096x1024x1024")
ROUTES = ("fused", "basis gemm")
TIMED = ("fused", "fused graph", "basis gemm", "basis gemm graph", "gemm floor")
TARGET = {"shape": "4096x3136x256", "bf16 graph": 0.6, "bf16 eager": 1.0}  # issue 20, fwd+bwd
Tiles = basis_gemm.Tiles
CANDIDATES: dict[str, list[Tiles]] = {
    "forward": [
        Tiles(128, 256, 64, 8, 3), Tiles(128, 256, 128, 8, 2), Tiles(128, 128, 128, 8, 3),
        Tiles(256, 128, 64, 8, 3), Tiles(64, 256, 64, 8, 3), Tiles(128, 256, 32, 8, 4),
        Tiles(128, 128, 64, 4, 4),
    ],
    "input_grad": [
        Tiles(64, 64, 128, 4, 3), Tiles(128, 64, 128, 8, 3), Tiles(64, 128, 128, 4, 3),
        Tiles(32, 64, 128, 4, 3), Tiles(64, 64, 64, 4, 4), Tiles(128, 128, 64, 8, 3),
    ],
    "weight_grad": [
        Tiles(64, 256, 64, 8, 3), Tiles(128, 256, 64, 8, 3), Tiles(64, 256, 128, 8, 2),
        Tiles(64, 128, 128, 8, 3), Tiles(32, 256, 64, 4, 3), Tiles(128, 128, 128, 8, 3),
    ],
}  # fmt: skip
PATHS = ("uniform", "general")  # the kernels' two ways to build the basis tile
SPLITS = (None, 1, 2, 4, 8)  # forward K splits; None: `basis_gemm.forward_splits`


def make_layer(
    n_in: int, n_out: int, args: argparse.Namespace, device: torch.device, refit: bool
) -> KANLinear:
    torch.manual_seed(0)
    layer = KANLinear(
        n_in, n_out, grid_size=args.grid_size, spline_order=args.spline_order, scale_base=2.5,
        device=device, fused=True,
    )  # fmt: skip
    with torch.no_grad():
        layer.spline_weight.normal_()
    if refit:  # skewed samples: a non-uniform grid
        layer.update_grid(torch.rand(4096, n_in, device=device) ** 3 * 2 - 1)
    return layer


def outputs_and_grads(
    layer: KANLinear, x: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    (y.to(weights.dtype) * weights).sum().backward()
    return y.detach(), x.grad, layer.base_weight.grad, layer.spline_weight.grad


def path_of(layer: KANLinear) -> str:
    """The path the basis GEMM kernels take for `layer`'s grid and order."""
    return "uniform" if basis_gemm.uniform_path(layer._uniform, layer.spline_order) else "general"


def exactness(shape: str, args: argparse.Namespace, device: torch.device) -> list[str]:
    """Print both routes' errors against the float64 reference; return the float32 failures."""
    n, n_in, n_out = parse_shape(shape)
    failures = []
    for grid in ("uniform", "refit"):
        layer = make_layer(n_in, n_out, args, device, grid == "refit")
        x = torch.randn(n, n_in, device=device) * 0.8  # a few percent outside the grid
        weights = torch.randn(n, n_out, device=device)
        reference = copy.deepcopy(layer).double()
        reference.fast = False
        ref = outputs_and_grads(reference, x.double(), weights.double())
        del reference
        for precision in args.precisions:
            amp = precision == "bf16"
            for route in ROUTES:
                layer.basis_gemm = route == "basis gemm"
                with torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext():
                    ours = outputs_and_grads(layer, x, weights)
                errors = [
                    float((a.double() - b).abs().max() / b.abs().max())
                    for a, b in zip(ours, ref, strict=True)
                ]
                worst = max(errors)
                verdict = "" if amp else (" ok" if worst <= 1e-5 else " FAIL")
                path = path_of(layer) if layer.basis_gemm else "-"
                name = f"{shape} {grid:>7} {precision} {route:>10} {path:>7}"
                labels = ("out", "d/dx", "d/dWb", "d/dC")
                parts = (f"{k} {e:.1e}" for k, e in zip(labels, errors, strict=True))
                print(f"exactness {name}: {', '.join(parts)}{verdict}")
                if verdict == " FAIL":
                    failures.append(name)
    return failures


def kernel_inputs(shape: str, dtype: torch.dtype, args: argparse.Namespace, device: torch.device):
    """x, grid (float32) and weight, base, dL/dOut in `dtype` for the kernels alone."""
    n, n_in, n_out = parse_shape(shape)
    grid = make_layer(n_in, 1, args, device, refit=False).grid
    x = torch.rand(n, n_in, device=device) * 2 - 1
    n_cols = args.grid_size + args.spline_order
    weight = torch.randn(n_out, n_cols * n_in, device=device, dtype=dtype)
    base = torch.randn(n, n_out, device=device, dtype=dtype)
    grad = torch.randn(n, n_out, device=device, dtype=dtype)
    return x, grid, weight, base, grad


def kernel_calls(
    shape: str, dtype: torch.dtype, path: str, args: argparse.Namespace, device: torch.device
) -> dict[str, Callable[[], object]]:
    """The three kernels on `path` ("uniform", or "general": the same grid, searched)."""
    x, grid, weight, base, grad = kernel_inputs(shape, dtype, args, device)
    k = args.spline_order
    inv_h = basis_gemm.inverse_spacing(grid, k, uniform=path == "uniform")
    if path == "uniform" and inv_h is None:
        raise SystemExit(f"the uniform path has no closed form for order {k}")
    return {
        "forward": lambda: basis_gemm.spline_forward(
            x, grid, k, weight, base, 1.0, 1.0, True, inv_h=inv_h
        ),
        "input_grad": lambda: basis_gemm.spline_input_grad(grad, x, grid, k, weight, 1.0, inv_h),
        "weight_grad": lambda: basis_gemm.spline_weight_grad(
            grad, x, grid, k, 1.0, torch.float32, inv_h
        ),
    }


def kernel_ms(call: Callable[[], object]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(call, warmup=10, rep=50))


def sweep(shape: str, precision: str, args: argparse.Namespace, device: torch.device) -> None:
    """Time each kernel's candidates (the forward's with each K split) on --sweep-path, best
    first."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    calls = kernel_calls(shape, dtype, args.sweep_path, args, device)
    saved = dict(basis_gemm.TILES), basis_gemm.FORWARD_SPLIT
    try:
        for kernel, call in calls.items():
            results = []
            for tiles in CANDIDATES[kernel]:
                for split in SPLITS if kernel == "forward" else (None,):
                    basis_gemm.TILES[kernel], basis_gemm.FORWARD_SPLIT = tiles, split
                    label = (
                        f"{tiles} split={split or 'auto'}" if kernel == "forward" else f"{tiles}"
                    )
                    try:
                        results.append((kernel_ms(call), label))
                    except Exception as exc:  # a candidate that does not compile or fit
                        print(f"sweep {shape} {precision} {kernel} {label}: {exc!r:.120}")
            name = f"{shape} {precision} {args.sweep_path} {kernel}"
            for ms, label in sorted(results)[:5]:
                print(f"sweep {name}: {ms:7.3f} ms  {label}")
    finally:
        basis_gemm.TILES.clear()
        basis_gemm.TILES.update(saved[0])
        basis_gemm.FORWARD_SPLIT = saved[1]


def fp64_check(args: argparse.Namespace, device: torch.device) -> None:
    """The kernels in float64 on the device (256 x 64 -> 32) against the reference basis."""
    n, n_in, n_out = 256, 64, 32
    grid = make_layer(n_in, 1, args, device, refit=True).grid.double()
    x = torch.randn(n, n_in, device=device, dtype=torch.float64)
    k = args.spline_order
    weight = torch.randn(n_out, (grid.shape[1] - 1 - k) * n_in, device=device, dtype=x.dtype)
    base = torch.randn(n, n_out, device=device, dtype=x.dtype)
    grad = torch.randn(n, n_out, device=device, dtype=x.dtype)
    xr = x.clone().requires_grad_(True)
    basis = reference_basis(xr, grid, k).transpose(1, 2).reshape(n, -1)  # (N, (G+k)*in)
    (basis * (grad @ weight)).sum().backward()
    basis = basis.detach()
    try:
        out, _, _ = basis_gemm.spline_forward(x, grid, k, weight, base, 1.0, 1.0)
        dx = basis_gemm.spline_input_grad(grad, x, grid, k, weight, 1.0)
        dw = basis_gemm.spline_weight_grad(grad, x, grid, k, 1.0, torch.float64)
    except Exception as exc:
        print(f"fp64 kernels on {device}: do not run: {exc!r:.300}")
        return
    errors = {
        "out": (out - (basis @ weight.t() + base)).abs().max(),
        "d/dx": (dx - xr.grad).abs().max(),
        "d/dW": (dw - grad.t() @ basis).abs().max(),
    }
    print("fp64 kernels on device: " + ", ".join(f"{k} {float(e):.1e}" for k, e in errors.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated NxINxOUT")
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--grid-size", type=int, default=5)
    parser.add_argument("--spline-order", type=int, default=3)
    parser.add_argument("--no-exactness", action="store_true", help="skip step 1")
    parser.add_argument("--sweep", action="store_true", help="time alternative block sizes")
    parser.add_argument("--sweep-path", default="uniform", choices=PATHS, help="what --sweep times")
    parser.add_argument("--fp64", action="store_true", help="try the kernels in float64")
    parser.add_argument(
        "--fp32-precision", default=basis_gemm.FP32_PRECISION, choices=("ieee", "tf32x3"),
        help="tl.dot's input precision for float32 (basis_gemm.FP32_PRECISION)",
    )  # fmt: skip
    args = parser.parse_args()
    basis_gemm.FP32_PRECISION = args.fp32_precision
    args.precisions = args.precisions.split(",")
    args.chunk_size = None  # what bench/kan_layer.py's variants read
    if not torch.cuda.is_available():
        print("basis_gemm_check needs CUDA (tests/unit/test_basis_gemm.py checks the kernels on")
        print("the CPU under TRITON_INTERPRET=1); nothing to do here")
        return
    device = torch.device("cuda")
    shapes = args.shapes.split(",")
    name = torch.cuda.get_device_name(device)
    print(f"basis GEMM check on {name}; G={args.grid_size} k={args.spline_order}; torch "
          f"{torch.__version__}; fp32 {args.fp32_precision}; tiles {basis_gemm.TILES}")  # fmt: skip
    failures = []
    if args.fp64:
        fp64_check(args, device)
    for shape in shapes:
        if not args.no_exactness:
            failures += exactness(shape, args, device)
    timed_path = "uniform" if basis_gemm.uniform_path(True, args.spline_order) else "general"
    print(f"timed layers: fresh (uniform) grids; basis gemm rows run the {timed_path} path")
    print(f"{'shape':>15} {'prec':>4} {'variant':>16} {'fwd ms':>8} {'fwd+bwd ms':>11} {'MiB':>8}")
    for shape in shapes:
        for precision in args.precisions:
            for row in measure_shape(shape, precision, args, device, TIMED):
                print(
                    f"{shape:>15} {precision:>4} {row.variant:>16} {row.fwd_ms:8.3f} "
                    f"{row.fwd_bwd_ms:11.3f} {row.peak_mib:8.1f}"
                )
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            for path in PATHS if basis_gemm.uniform_path(True, args.spline_order) else PATHS[1:]:
                calls = kernel_calls(shape, dtype, path, args, device)
                times = {k: kernel_ms(c) for k, c in calls.items()}
                print(f"{shape:>15} {precision:>4} kernels alone, {path:>7} path: "
                      + ", ".join(f"{k} {ms:.3f} ms" for k, ms in times.items()))  # fmt: skip
    if TARGET["shape"] in shapes and "bf16" in args.precisions:
        print(f"target (issue 20) at {TARGET['shape']} bf16 fwd+bwd: basis gemm graph <= "
              f"{TARGET['bf16 graph']} ms, basis gemm <= {TARGET['bf16 eager']} ms")  # fmt: skip
    if args.sweep:
        for shape in shapes:
            for precision in args.precisions:
                sweep(shape, precision, args, device)
    if failures:
        raise SystemExit(f"float32 beyond 1e-5: {', '.join(failures)}")


if __name__ == "__main__":
    main()
