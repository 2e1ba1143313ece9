"""How fast and lean is our KAN layer, against the textbook reference, nn.Linear and a GEMM floor.

For each shape (batch, in -> out) and precision, times forward and forward+backward (median of
interleaved repetitions, so background load hits every variant alike) and measures the peak extra
memory of one forward+backward, then prints a table with ratios to the textbook reference
measured in the same run:

* fused (CUDA only): `KANLinear`'s default on a GPU: the basis and its input gradient as two
  Triton kernels (`kan_engine.fused_basis`), matmuls by cuBLAS, recompute-in-backward;
* fused graph (CUDA only): the same, captured once in a CUDA graph and replayed, as the trainer
  runs its steps: the GPU time of the layer without Python's launch overhead;
* fused cublas (CUDA only): the fused route with KAN_TUI_TF32X3=0 during its calls: float32
  products by cuBLAS on the CUDA cores instead of `kan_engine.tf32x3` on tensor cores (bfloat16
  rows: the same route as "fused");
* fused two-node (CUDA only): the fused route without `kan_engine.fused_layer` (SiLU and its
  matmul as autograd ops beside the spline's own node, as before session 8), which the layer
  takes for a base activation other than SiLU: the A/B of the one-node route in the same run;
* basis gemm, basis gemm graph (CUDA only): `KANLinear(basis_gemm=True)`, the opt-in route whose
  Triton matmuls generate the basis in their operand loads (`kan_engine.basis_gemm`), eager and
  replayed from a CUDA graph;
* local: `KANLinear(fused=False)`: the eager fast path, the CPU's: in float32 its matmuls take
  the gathered route of `kan_engine.spline_gather` (only the k+1 non-zero basis values per input
  are multiplied), optionally `--chunk-size` (every "ours" row takes it; a chunk size keeps the
  dense route);
* local dense (CPU only): the same layer with KAN_TUI_GATHER=0 during its calls: the local
  scheme's dense basis and three dense matmuls, the CPU's route before the gathered one;
* reference: `KANLinear(fast=False)`: Cox-de Boor recursion to (N, in, G+k), one matmul, autograd;
* linear: `nn.Linear(in, out)`, what a plain MLP layer costs;
* gemm floor: one matmul (N, in*(G+k)) x (in*(G+k), out) with gradients for both operands, the
  cost of the spline matmuls alone, without the basis;
* efficient-kan, fast-kan (with `--anchors DIR`): the public layers measured beside ours, from
  their sources in DIR (`DIR/efficient_kan/`, `DIR/fastkan/`, copied from Blealtan/efficient-kan
  and ZiyaoLi/fast-kan into an ignored folder: read and measured, never part of kan-tui):
  efficient-kan's `KANLinear(in, out, grid_size=G, spline_order=k)` (exact B-splines, dense
  basis) and fast-kan's `FastKANLayer(in, out, num_grids=G+k, use_layernorm=False)` (Gaussian
  RBFs, not B-splines: an approximation; as many basis functions per edge as ours, and no
  LayerNorm, which is not part of a KAN layer). A missing source skips its rows with a note.

Peak memory: CUDA uses torch.cuda.max_memory_allocated minus what was allocated before; the CPU
has no allocator statistics, so there it is the peak of live tensor storages created during the
step (`kan_engine.memory_peak.TensorMemoryPeak`), which counts the same things.

    python bench/kan_layer.py --device cpu
    python bench/kan_layer.py --device cuda --json bench-kan-layer.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from kan_engine import spline_gather, tf32x3
from kan_engine.atomic import write_text
from kan_engine.kan import KANLinear
from kan_engine.memory_peak import TensorMemoryPeak

SHAPES = ("1024x784x256", "4096x3136x256", "4096x1024x1024", "256x1024x1024")
CPU_SHAPES = ("1024x784x256", "256x1024x1024")
VARIANTS = (
    "fused", "fused graph", "fused cublas", "fused two-node", "basis gemm", "basis gemm graph",
    "local", "local dense", "reference", "linear", "gemm floor",
)  # fmt: skip
ANCHORS = ("efficient-kan", "fast-kan")  # with --anchors DIR
BASIS_GEMM = ("basis gemm", "basis gemm graph")
# Triton kernels: CUDA only
FUSED = ("fused", "fused graph", "fused cublas", "fused two-node", *BASIS_GEMM)
OURS = (*FUSED, "local", "local dense")


def variants(device: torch.device, anchors: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The Triton routes run only on CUDA (elsewhere Triton could only interpret them, slowly),
    "local dense" only on the CPU (on CUDA it is "local"); `anchors`: the public layers found
    (`load_anchors`)."""
    skip = ("local dense",) if device.type == "cuda" else FUSED
    return (*(v for v in VARIANTS if v not in skip), *anchors)


SWITCHED_OFF = {"local dense": spline_gather.ENABLE_ENV, "fused cublas": tf32x3.ENABLE_ENV}


@contextmanager
def _switched_off(name: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


def route(variant: str) -> AbstractContextManager[None]:
    """What a call of `variant` runs in: its switch (`SWITCHED_OFF`) at "0", else nothing. The
    layer's backward follows the route its forward took."""
    name = SWITCHED_OFF.get(variant)
    return _switched_off(name) if name else nullcontext()


def load_anchors(folder: Path | None) -> dict[str, type[nn.Module]]:
    """The public layers' classes from their sources in `folder` (module docstring)."""
    if folder is None:
        return {}
    sys.path.insert(0, str(folder.resolve()))
    found: dict[str, type[nn.Module]] = {}
    for name, module, cls in (
        ("efficient-kan", "efficient_kan", "KANLinear"),
        ("fast-kan", "fastkan", "FastKANLayer"),
    ):
        try:
            found[name] = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as exc:
            print(f"note: {name} skipped: no {module}.{cls} under {folder} ({exc})")
    return found


@dataclass
class Row:
    shape: str
    precision: str
    variant: str
    fwd_ms: float
    fwd_bwd_ms: float
    peak_mib: float


def parse_shape(text: str) -> tuple[int, int, int]:
    """'1024x784x256' -> (batch, in, out)."""
    try:
        n, i, o = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--shapes: {text!r} is not BATCHxINxOUT") from exc
    return n, i, o


def build(
    variant: str, n: int, i: int, o: int, args: argparse.Namespace, device: torch.device
) -> tuple[Callable[[], torch.Tensor], list[torch.Tensor]]:
    """The forward callable of a variant and the leaves whose .grad a step creates."""
    k1 = args.grid_size + args.spline_order
    if variant == "gemm floor":
        a = torch.rand(n, i * k1, device=device, requires_grad=True)  # (N, in*(G+k))
        w = torch.randn(i * k1, o, device=device, requires_grad=True)  # (in*(G+k), out)
        return lambda: a @ w, [a, w]
    x = (torch.rand(n, i, device=device) * 2 - 1).requires_grad_(True)  # inside the grid
    if variant == "linear":
        layer: nn.Module = nn.Linear(i, o, device=device)
    elif variant == "efficient-kan":
        layer = args.anchor_classes[variant](
            i, o, grid_size=args.grid_size, spline_order=args.spline_order
        ).to(device)
    elif variant == "fast-kan":
        layer = args.anchor_classes[variant](i, o, num_grids=k1, use_layernorm=False).to(device)
    else:
        layer = KANLinear(
            i,
            o,
            grid_size=args.grid_size,
            spline_order=args.spline_order,
            device=device,
            fast=variant in OURS,
            fused=variant in FUSED,
            basis_gemm=variant in BASIS_GEMM,
            chunk_size=args.chunk_size if variant in OURS else None,
            base_activation=_TwoNodeSiLU if variant == "fused two-node" else nn.SiLU,
        )

    def forward() -> torch.Tensor:
        with route(variant):
            return layer(x)

    return forward, [x, *layer.parameters()]


class _TwoNodeSiLU(nn.SiLU):
    """SiLU under another type: `KANLinear` gives the one-node route to nn.SiLU only."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(
    forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor], grad: torch.Tensor | None
):
    """One forward (and backward when `grad` is given), gradients cleared first."""
    for leaf in leaves:
        leaf.grad = None
    out = forward()
    if grad is not None:
        out.backward(grad)


def runner(
    variant: str, forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor],
    grad: torch.Tensor | None, device: torch.device,
) -> Callable[[], None]:  # fmt: skip
    """What one timed forward (grad None) or forward+backward runs: the step itself, or for
    the "... graph" variants the replay of a CUDA graph captured from it (after warm-up on a side
    stream, as torch.cuda.graph requires)."""

    def once() -> None:
        with torch.no_grad() if grad is None else nullcontext():
            step(forward, leaves, grad)

    if not variant.endswith(" graph"):
        return once
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            once()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        once()
    return graph.replay


def peak_mib(forward, leaves, grad, device: torch.device) -> float:
    step(forward, leaves, grad)  # gradients allocated once, as in training
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(forward, leaves, grad)
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with TensorMemoryPeak() as meter:
        step(forward, leaves, grad)
    return meter.peak / 2**20


def measure_shape(
    shape: str, precision: str, args: argparse.Namespace, device: torch.device,
    names: tuple[str, ...] | None = None,
) -> list[Row]:  # fmt: skip
    """Rows of the variants `names` (default: every one `device` runs) at one shape."""
    n, i, o = parse_shape(shape)
    # One CPU thread on a shared machine: CPU time of the process is immune to time slices lost
    # to other processes (page faults still count, as system time). Otherwise wall time.
    cpu_time = device.type == "cpu" and args.threads == 1
    clock = time.process_time if cpu_time else time.perf_counter
    amp = precision == "bf16"
    # No autocast weight cache: it would cast nn.Linear's and the reference's weights once for
    # all repetitions (ours casts its own every step), and CUDA graphs cannot capture with it.
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
        if amp
        else nullcontext()
    )
    names = names or variants(device, tuple(args.anchor_classes))
    cases = {v: build(v, n, i, o, args, device) for v in names}
    grad = torch.randn(n, o, device=device)
    times: dict[tuple[str, str], list[float]] = {(v, m): [] for v in names for m in ("f", "fb")}
    with autocast:
        runs = {
            (v, mode): runner(v, *cases[v], g, device)
            for v in names
            for mode, g in (("f", None), ("fb", grad))
        }
        for rep in range(args.warmup + args.reps):
            for key, run in runs.items():
                sync(device)
                start = clock()
                run()
                sync(device)
                if rep >= args.warmup:
                    times[key].append((clock() - start) * 1e3)
        peaks = {v: peak_mib(*cases[v], grad, device) for v in names}
    return [
        Row(
            shape,
            precision,
            v,
            statistics.median(times[(v, "f")]),
            statistics.median(times[(v, "fb")]),
            peaks[v],
        )
        for v in names
    ]


def print_table(rows: list[Row]) -> None:
    head = (
        f"{'shape':>15} {'prec':>4} {'variant':>16} {'fwd ms':>9} {'fwd+bwd ms':>11} "
        f"{'peak MiB':>9} {'fwd/ref':>8} {'f+b/ref':>8} {'mem/ref':>8}"
    )
    print(head)
    print("-" * len(head))
    ref = {(r.shape, r.precision): r for r in rows if r.variant == "reference"}
    for r in rows:
        b = ref[(r.shape, r.precision)]
        print(
            f"{r.shape:>15} {r.precision:>4} {r.variant:>16} {r.fwd_ms:9.2f} {r.fwd_bwd_ms:11.2f} "
            f"{r.peak_mib:9.1f} {r.fwd_ms / b.fwd_ms:8.2f} {r.fwd_bwd_ms / b.fwd_bwd_ms:8.2f} "
            f"{r.peak_mib / max(b.peak_mib, 1e-9):8.2f}"
        )


def print_anchor_ratios(rows: list[Row]) -> None:
    """fwd+bwd time of each of our routes over each public layer's, at each shape/precision
    (below 1: ours is faster; the issue-20 targets read: <= 0.25 against efficient-kan, < 1
    against fast-kan, eager)."""
    table = {(r.shape, r.precision, r.variant): r.fwd_bwd_ms for r in rows}
    anchors = sorted({r.variant for r in rows if r.variant in ANCHORS})
    if not anchors:
        return
    print("\nfwd+bwd time, ours / theirs (same run)")
    for shape, precision in dict.fromkeys((r.shape, r.precision) for r in rows):
        for ours in OURS:
            mine = table.get((shape, precision, ours))
            if mine is None:
                continue
            cells = [
                f"/ {a} {mine / table[(shape, precision, a)]:.2f}"
                for a in anchors
                if (shape, precision, a) in table
            ]
            print(f"{shape:>15} {precision:>4} {ours:>16} {mine:8.2f} ms  " + "  ".join(cells))


def exactness(device: torch.device) -> list[str]:
    """Our paths vs the reference on `device`: outputs and gradients, uniform and updated grids.

    Float64 must agree to 1e-10, float32 to 1e-5 relative (the tests check the CPU; this checks
    the device's code path; "basis gemm" in float64 is today's fused route on a GPU, see
    `basis_gemm.supports`). Under bf16 autocast the error against the float32 reference is
    printed, not judged. Returns the failures.
    """
    failures = []
    eager = [v for v in variants(device) if v in ("fused", "basis gemm", "local", "local dense")]
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        for grid in ("uniform", "updated"):
            torch.manual_seed(0)
            layer = KANLinear(48, 24, scale_base=2.5, device=device, dtype=dtype)
            with torch.no_grad():
                layer.spline_weight.normal_()
            if grid == "updated":
                layer.update_grid(torch.rand(512, 48, device=device, dtype=dtype) ** 3 * 2 - 1)
            x = torch.randn(300, 48, device=device, dtype=dtype) * 1.5
            results = {}
            for variant in [*eager, "reference"]:
                layer.fast = variant in OURS
                layer.fused = variant in FUSED
                layer.basis_gemm = variant in BASIS_GEMM
                layer.zero_grad(set_to_none=True)
                xg = x.clone().requires_grad_(True)
                with route(variant):
                    y = layer(xg)
                    y.backward(torch.ones_like(y))
                grads = (xg.grad, layer.base_weight.grad, layer.spline_weight.grad)
                results[variant] = (y.detach(), *grads)
            for variant in eager:
                worst = max(
                    float((a - b).abs().max() / (b.abs().max() if dtype == torch.float32 else 1))
                    for a, b in zip(results[variant], results["reference"], strict=True)
                )
                verdict = "ok" if worst <= tol else "FAIL"
                name = f"{variant} {device.type} {str(dtype)[6:]} {grid}"
                print(f"exactness {name}: max error {worst:.2e} {verdict}")
                if worst > tol:
                    failures.append(name)
    torch.manual_seed(0)
    layer = KANLinear(48, 24, device=device)
    x = torch.rand(300, 48, device=device) * 2 - 1
    exact = layer(x).detach()
    for variant in eager:
        layer.fused = variant in FUSED
        layer.basis_gemm = variant in BASIS_GEMM
        with torch.autocast(device.type, dtype=torch.bfloat16), route(variant):
            approx = layer(x.requires_grad_(True))
            approx.float().sum().backward()
        error = float((approx.detach().float() - exact).norm() / exact.norm())
        print(f"bf16 autocast {variant} {device.type}: relative error {error:.2e}, {approx.dtype}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help="cpu or cuda[:N]")
    parser.add_argument(
        "--shapes",
        default=None,
        help=f"comma-separated BATCHxINxOUT (default: cuda {','.join(SHAPES)}; "
        f"cpu {','.join(CPU_SHAPES)}; 'all' for every shape)",
    )
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (cpu 5, cuda 50)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first rounds (1 / 10)")
    parser.add_argument("--grid-size", type=int, default=5)
    parser.add_argument("--spline-order", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None, help="chunk_size of 'ours'")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: stable)")
    parser.add_argument("--json", metavar="OUT", default=None, help="also write the rows as JSON")
    parser.add_argument(
        "--anchors", type=Path, default=None, metavar="DIR",
        help="also time efficient-kan and fast-kan from their sources in DIR (see the docstring)",
    )  # fmt: skip
    args = parser.parse_args()
    args.anchor_classes = load_anchors(args.anchors)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    if args.shapes in (None, "all"):
        shapes = list(SHAPES if cuda or args.shapes == "all" else CPU_SHAPES)
    else:
        shapes = args.shapes.split(",")
    for shape in shapes:
        parse_shape(shape)
    args.reps = args.reps or (50 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    precisions = ("fp32", "bf16") if cuda else ("fp32",)
    name = torch.cuda.get_device_name(device) if cuda else f"cpu, {args.threads} thread(s)"
    print(
        f"KAN layer benchmark on {name}; G={args.grid_size} k={args.spline_order} "
        f"chunk={args.chunk_size}; median of {args.reps} (warm-up {args.warmup}); "
        f"{'CPU time' if device.type == 'cpu' and args.threads == 1 else 'wall time'}; torch "
        f"{torch.__version__}"
    )
    if not cuda:
        print("fused and basis gemm routes: CUDA only, skipped here")
        state = spline_gather.available()  # builds the extension before anything is timed
        print(f"gathered route (local, float32): {'on' if state else 'off: ' + state.reason}")
    failures = exactness(device)
    rows = [r for s in shapes for p in precisions for r in measure_shape(s, p, args, device)]
    print_table(rows)
    print_anchor_ratios(rows)
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        del settings["anchor_classes"]
        meta = {"device": name, "torch": torch.__version__, "args": settings}
        report = {"meta": meta, "failures": failures, "rows": [asdict(r) for r in rows]}
        write_text(Path(args.json), json.dumps(report, indent=1))
    if failures:
        raise SystemExit(f"fast path differs from the reference: {', '.join(failures)}")


if __name__ == "__main__":
    main()
