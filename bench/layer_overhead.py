"""Host time of one KANLinear forward and forward+backward at small shapes, eager, in µs.

At small shapes the layer is bound by the host (Python, the dispatcher, kernel launches), not by
arithmetic: on an H200 one eager forward+backward at (1024, 784->256) took 1.58 ms of host time
for 0.40 ms of GPU work (issue 20). This prints, per shape and for a training forward ("fwd",
grad mode on, as the trainer runs it) and a forward+backward ("fwd+bwd", gradients set to None
first, as `zero_grad` does):

* host: the time the host takes to run the step's Python and issue its work (CUDA: from an idle
  GPU, without waiting for the GPU at the end; the CPU computes synchronously, so there it is
  the whole step);
* eager (CUDA): the same step waited for, start to finish on the GPU;
* graph (CUDA): that step captured once as a CUDA graph and replayed: the GPU time without the
  host's share, which `cuda_graph.GraphedStep` gets for training steps;
* host/graph (CUDA): how many times the GPU work the host time is; above 1 the eager layer is
  bound by the host.

`--layers` adds floors measured the same way: `linear` (nn.Linear: three matmuls, autograd's
C++ nodes) and `python-linear` (the same matmuls in a torch.autograd.Function, whose backward
is Python, as ours is: the least any layer with a Python backward costs here).

Medians over `--steps` steps, the best of `--repeats` rounds (background load only slows).

    python3 bench/layer_overhead.py --device cuda
    python3 bench/layer_overhead.py --device cpu --shapes 900x2x1 --dtype float64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from kan_engine.kan import KANLinear

CUDA_SHAPES = ("1024x784x256", "256x256x256", "64x64x64", "900x2x1")
CPU_SHAPES = ("900x2x1", "64x64x64", "256x256x256")
FUSED = {"auto": None, "on": True, "off": False}
LAYERS = ("kan", "linear", "python-linear")


class _PythonLinear(torch.autograd.Function):
    """x @ W^T with the backward in Python: the host-time floor of a custom autograd node."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return torch.mm(x, weight.t())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        return torch.mm(grad, weight), torch.mm(grad.t(), x)


class PythonLinear(torch.nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PythonLinear.apply(x, self.weight)


def parse_shape(text: str) -> tuple[int, int, int]:
    """'1024x784x256' -> (batch, in, out)."""
    try:
        n, i, o = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--shapes: {text!r} is not BATCHxINxOUT") from exc
    return n, i, o


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(
    shape: tuple[int, int, int], args: argparse.Namespace, device: torch.device, backward: bool,
    kind: str = "kan",
) -> Callable[[], None]:  # fmt: skip
    """One training forward of a fresh layer at `shape` (and its backward when `backward`)."""
    n, i, o = shape
    dtype = getattr(torch, args.dtype)
    layer: torch.nn.Module
    if kind == "kan":
        layer = KANLinear(i, o, device=device, dtype=dtype, fused=FUSED[args.fused])
    else:
        floor = torch.nn.Linear if kind == "linear" else PythonLinear
        layer = floor(i, o, bias=False, device=device, dtype=dtype)
    layer.train()
    x = (torch.rand(n, i, device=device, dtype=dtype) * 2 - 1).requires_grad_(args.input_grad)
    grad = torch.randn(n, o, device=device, dtype=dtype)
    leaves = [x, *layer.parameters()]

    def step() -> None:
        if not backward:
            layer(x)
            return
        for leaf in leaves:
            leaf.grad = None
        layer(x).backward(grad)

    return step


def graphed(step: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """`step` captured as a CUDA graph (after warm-up on a side stream, as torch.cuda.graph
    requires), returned as its replay."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def timed(run: Callable[[], None], device: torch.device, args: argparse.Namespace, wait: bool):
    """Best over rounds of the median µs of one `run`, started from an idle device; `wait`:
    until the device has finished it, else until the host has issued it."""
    for _ in range(args.warmup):
        run()
    best = float("inf")
    for _ in range(args.repeats):
        times = []
        for _ in range(args.steps):
            sync(device)
            start = time.perf_counter()
            run()
            if wait:
                sync(device)
            times.append(time.perf_counter() - start)
        best = min(best, statistics.median(times) * 1e6)
    sync(device)
    return best


def measure(shape: str, args: argparse.Namespace, device: torch.device, kind: str) -> list[str]:
    """The printed rows of one shape and layer: fwd and fwd+bwd."""
    cuda = device.type == "cuda"
    rows = []
    for mode, backward in (("fwd", False), ("fwd+bwd", True)):
        step = make_step(parse_shape(shape), args, device, backward, kind)
        host = timed(step, device, args, wait=False)
        cells = [f"{shape:>14} {kind:>13} {mode:>8} {host:9.1f}"]
        if cuda:
            eager = timed(step, device, args, wait=True)
            graph = timed(graphed(step, device), device, args, wait=True)
            cells.append(f"{eager:9.1f} {graph:9.1f} {host / graph:10.1f}")
        rows.append(" ".join(cells))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help="cpu or cuda[:N]")
    parser.add_argument(
        "--shapes",
        default=None,
        help=f"comma-separated BATCHxINxOUT (default: cuda {','.join(CUDA_SHAPES)}; "
        f"cpu {','.join(CPU_SHAPES)})",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument(
        "--fused", default="auto", choices=tuple(FUSED), help="KANLinear(fused=...): auto = None"
    )
    parser.add_argument(
        "--no-input-grad", dest="input_grad", action="store_false",
        help="the input needs no gradient (a first layer); by default it does (a hidden one)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=200, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the best median counts")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: stable)")
    parser.add_argument(
        "--layers", default="kan", help=f"comma-separated, of {', '.join(LAYERS)} (default kan)"
    )
    args = parser.parse_args()
    kinds = args.layers.split(",")
    if unknown := sorted(set(kinds) - set(LAYERS)):
        parser.error(f"--layers: unknown {', '.join(unknown)} (known: {', '.join(LAYERS)})")

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    shapes = args.shapes.split(",") if args.shapes else list(CUDA_SHAPES if cuda else CPU_SHAPES)
    for shape in shapes:
        parse_shape(shape)
    name = torch.cuda.get_device_name(device) if cuda else f"cpu, {args.threads} thread(s)"
    print(
        f"KANLinear host time on {name}; {args.dtype}, fused={args.fused}, input grad "
        f"{'on' if args.input_grad else 'off'}; µs, median of {args.steps} steps, best of "
        f"{args.repeats}; torch {torch.__version__}"
    )
    header = f"{'shape':>14} {'layer':>13} {'mode':>8} {'host':>9}"
    if cuda:
        header += f" {'eager':>9} {'graph':>9} {'host/graph':>10}"
    print(header)
    for shape in shapes:
        for kind in kinds:
            for row in measure(shape, args, device, kind):
                print(row, flush=True)


if __name__ == "__main__":
    main()
