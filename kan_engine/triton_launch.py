"""Launch a Triton kernel that has already been compiled, without Triton's per-call work.

`kernel[grid](*args)` binds the arguments, computes their specialisation, looks the compiled
kernel up, reads the current device and stream and asks the launch hooks, on every call: on the
H200's host that is 50-80 µs of Python per launch (cProfile of an eager fwd+bwd at (1024,
784->256), three launches a step), where the launch itself is ~10 µs. At small shapes the
layer is bound by the host, so `launch` keeps each compiled kernel under the key of what Triton
specialises on (each tensor's dtype and 16-byte alignment, each integer's equality to 1, its
divisibility by 16 and its width, the constexprs) and calls its launcher directly.

The first call of a key goes through Triton (which compiles); later calls do what Triton's
`JITFunction.run` does after its look-up (no launch metadata: nothing asks for it while the
hooks are empty), for the Triton versions whose `run` passes every bound argument to the
launcher (3.2 on; older ones, the interpreter, or launch hooks installed by a profiler take
Triton's own path every time).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["launch"]

MIN_VERSION = (3, 2)

_COMPILED: dict[tuple[Any, ...], Any] = {}


def launch(
    kernel: Any, grid: tuple[int, int], args: tuple[Any, ...], constexprs: dict[str, Any],
    num_warps: int, interpreting: bool,
) -> None:  # fmt: skip
    """kernel[grid](*args, **constexprs, num_warps=num_warps), through the cache when it can."""
    hooks = None if interpreting or not _direct_supported() else _launch_hooks()
    if hooks is None:
        kernel[grid](*args, **constexprs, num_warps=num_warps)
        return
    device = torch.cuda.current_device()  # where Triton itself launches
    key = (kernel, device, num_warps, *map(_spec, args), *constexprs.items())
    entry = _COMPILED.get(key)
    if entry is None:
        compiled = kernel[grid](*args, **constexprs, num_warps=num_warps)
        # the launcher takes every argument in the kernel's order, constexprs included
        _COMPILED[key] = (compiled, [constexprs[name] for name in kernel.arg_names[len(args) :]])
        return
    compiled, constants = entry
    stream = _raw_stream(device)
    compiled.run(
        grid[0], grid[1], 1, stream, compiled.function, compiled.packed_metadata, None, *hooks,
        *args, *constants,
    )  # fmt: skip


def _raw_stream(device: int) -> int:
    """The current CUDA stream's handle, as Triton's own driver reads it (torch's C binding:
    `torch.cuda.current_stream` builds a Stream object first, ~10 µs here)."""
    read = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return read(device) if read is not None else torch.cuda.current_stream(device).cuda_stream


def _spec(arg: Any) -> tuple[Any, ...]:
    """What Triton's specialisation of one argument depends on."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.device.index, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool):
        return (bool, arg)
    if isinstance(arg, int):
        return int, arg == 1, arg % 16 == 0, -(2**31) <= arg < 2**31
    return (type(arg),)


@functools.cache
def _direct_supported() -> bool:
    import triton

    try:
        version = tuple(int(part) for part in triton.__version__.split(".")[:2])
    except ValueError:
        return False
    return version >= MIN_VERSION


def _launch_hooks() -> tuple[Any, Any] | None:
    """Triton's launch hooks as its own launch passes them, or None while a profiler has put
    a hook in (then every launch goes through Triton, which builds the hooks' metadata).
    Since Triton 3.4 they are chains (`knobs.HookChain`, empty unless something was added),
    before that class attributes of `CompiledKernel`, None unless set."""
    try:
        from triton import knobs

        runtime: Any = knobs.runtime
    except ImportError:
        from triton.compiler import CompiledKernel as runtime
    hooks = runtime.launch_enter_hook, runtime.launch_exit_hook
    if any(hook is not None and getattr(hook, "calls", True) for hook in hooks):
        return None
    return hooks
