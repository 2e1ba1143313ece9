"""Launch a Triton kernel that has already been compiled, without Triton's per-call work.

`kernel[grid](*args)` binds the arguments, computes their specialisation, looks the compiled
kernel up, reads the current device and stream and asks the launch hooks, on every call: on the
H200's host that is 50-80 µs of Python per launch (cProfile of an eager fwd+bwd at (1024,
784->256), three launches a step), where the launch itself is ~10 µs. At small shapes the
layer is bound by the host, so `launch` keeps each compiled kernel under the key of what Triton
specialises on (each tensor's dtype and 16-byte alignment, each integer's equality to 1, its
divisibility by 16 and its width, the constexprs) and calls its launcher directly.

The first call of a key goes through Triton (which compiles); later calls do what Triton's
`JITFunction.run` does after its look-up (every bound argument to the launcher, constexprs
included, and no launch metadata: nothing asks for it while the hooks are empty), from Triton
3.4 on (its `knobs`); older versions, the interpreter, a torch.compile trace or launch hooks
installed by a profiler take Triton's own path every time.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["launch"]

_COMPILED: dict[tuple[Any, ...], Any] = {}


def launch(
    kernel: Any, grid: tuple[int, int], args: tuple[Any, ...], constexprs: dict[str, Any],
    num_warps: int, interpreting: bool, num_stages: int | None = None,
) -> None:  # fmt: skip
    """kernel[grid](*args, **constexprs, num_warps=num_warps), through the cache when it can;
    `args` are the kernel's leading arguments, `constexprs` the rest, by name; `num_stages`
    (software pipelining of the matmuls' loops) is Triton's default where None."""
    options = {"num_warps": num_warps} | ({} if num_stages is None else {"num_stages": num_stages})
    hooks = None if interpreting or torch.compiler.is_compiling() else _launch_hooks()
    if hooks is None:  # Triton's own launch (which torch.compile also knows how to trace)
        kernel[grid](*args, **constexprs, **options)
        return
    device = torch.cuda.current_device()  # where Triton itself launches
    key = (kernel, device, num_warps, num_stages, *constexprs.items(), _signature(args))
    entry = _COMPILED.get(key)
    if entry is None:
        compiled = kernel[grid](*args, **constexprs, **options)
        # the launcher takes every argument in the kernel's order, constexprs included
        _COMPILED[key] = (compiled, [constexprs[name] for name in kernel.arg_names[len(args) :]])
        return
    compiled, constants = entry
    compiled.run(
        grid[0], grid[1], 1, _raw_stream(device), compiled.function, compiled.packed_metadata,
        None, *hooks, *args, *constants,
    )  # fmt: skip


def _raw_stream(device: int) -> int:
    """The current CUDA stream's handle, as Triton's own driver reads it (torch's C binding:
    `torch.cuda.current_stream` builds a Stream object first, ~10 µs here)."""
    read = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return read(device) if read is not None else torch.cuda.current_stream(device).cuda_stream


def _signature(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What Triton's specialisation of the arguments depends on: each tensor's dtype and
    16-byte alignment; each integer's equality to 1, divisibility by 16 and width."""
    return tuple(
        [
            (a.dtype, a.data_ptr() % 16 == 0)
            if isinstance(a, torch.Tensor)
            else (a == 1, a % 16 == 0, -(2**31) <= a < 2**31)
            if isinstance(a, int)
            else None
            for a in args
        ]
    )


@functools.cache
def _knobs_runtime() -> Any:
    """Triton's runtime knobs (3.4 on), or None: older versions keep the hooks elsewhere and
    pass the launcher other arguments, so they get Triton's own launch."""
    try:
        from triton import knobs
    except ImportError:
        return None
    return knobs.runtime


def _launch_hooks() -> tuple[Any, Any] | None:
    """Triton's launch hooks as its own launch passes them, or None while a profiler has put
    a hook in (then every launch goes through Triton, which builds the hooks' metadata) or
    where the direct launch is not supported. The hooks are chains (`knobs.HookChain`), empty
    unless something was added; anything else set there counts as a hook."""
    runtime = _knobs_runtime()
    if runtime is None:
        return None
    hooks = runtime.launch_enter_hook, runtime.launch_exit_hook
    if any(hook is not None and getattr(hook, "calls", True) for hook in hooks):
        return None
    return hooks
