"""One training step on the device: forward under autocast, the loss, backward, clipping, the
optimizer step (skipped on the device when non-finite) and the weight average's update.

Host syncs. A step hands back its values (loss, correct count, gradient norm, a finite flag)
packed in one device tensor for `PendingSteps`; the trainer reads them back together at most once
per `log_every` steps. Skipping a non-finite step therefore cannot branch on the host on CUDA:
there the optimizer is fused and gets the flag as `found_inf` (the mechanism GradScaler uses), so
the fused kernel skips the update on the device; the flag is looked at on the next read-back
(`deferred`). On the CPU (and MPS) the flag is read every step: there is no asynchronous device
queue to stall, so the read costs nothing. With fp16 the GradScaler reads its own overflow flag
every step anyway.

With `train.cuda_graphs` on CUDA the whole step (forward, backward, clipping, the fused step with
its `found_inf`, the weight average) is captured once and replayed (`cuda_graph.py`), the LRs are
device tensors, and steps with a grid update or a short batch run eagerly in between: nothing in
`__call__` may read back to the host on CUDA.

What the step runs on is built here too: the autocast dtype and the loss scaler
(`train.mixed_precision`), the DistributedDataParallel wrapper (`distributed.wrap`),
`torch.compile`, the weight average, the optimizer, the LR schedule and the graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kan_engine import cuda_graph, distributed, least_squares, models, optim
from kan_engine import data as data_mod
from kan_engine.config import RunConfig
from kan_engine.ema import WeightAverage
from kan_engine.errors import ConfigError
from kan_engine.events import Notice
from kan_engine.monitor import PendingSteps
from kan_engine.run_setup import precision


class TrainStep:
    """`step(x, y)`: one training step on the device; returns its values (`PendingSteps.pack`)."""

    def __init__(
        self,
        config: RunConfig,
        model: nn.Module,
        kan: dict[str, nn.Module],
        data: data_mod.DataBundle,
        device: torch.device,
        dist: distributed.Dist,
        notices: list[Notice],
    ) -> None:
        """Builds what the step runs on; what is worth a line goes to `notices`."""
        train = config.train
        self.config, self.model, self.kan, self.device, self.dist = config, model, kan, device, dist
        self.task = data.task
        self.amp_dtype, use_scaler, message = precision(config, device)
        if message:
            notices.append(Notice(message, "warning"))
        if optim.warmup_capped(config.schedule, train.epochs):
            notices.append(
                Notice(
                    f"schedule.warmup_epochs ({config.schedule.warmup_epochs:g}) is not shorter "
                    f"than the run ({train.epochs} epoch{'s' * (train.epochs != 1)}): "
                    "warming up over its first 10 %"
                )
            )
        self.train_model: nn.Module = model  # what a training step runs forward and back
        if dist.enabled:
            self.train_model = distributed.wrap(model, device)
        self.forward_model: Callable[[Tensor], Tensor] = self.train_model
        if train.compile:
            if device.type == "cuda":
                self.forward_model = best_effort_compile(self.train_model)
            else:
                notices.append(Notice(f"train.compile is CUDA-only: eager on {device}"))
        for layer in kan.values():  # the layers gather regulariser statistics only if asked
            layer.track_regularization = config.kan.reg_weight > 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ema = WeightAverage(model, train.ema_decay) if train.ema_decay > 0 else None
        graphs, message = cuda_graph.usable(
            config, device, distributed=dist.enabled, use_scaler=use_scaler
        )
        if message:
            notices.append(Notice(message))
        optim.check_least_squares(config, model, data.task.regression, data.sizes["train"])
        if train.huber_delta > 0 and not data.task.regression:
            reason = "the Huber loss is for regressions: this run is a classification"
            raise ConfigError("", "train.huber_delta", reason)
        self.optimizer = optim.build_optimizer(
            config, models.param_groups(model), device, capturable=graphs
        )
        self.train_size = data.sizes["train"]
        self.steps_per_epoch = train.steps_per_epoch or data.steps(
            "train", train.batch_size, world=dist.world
        )
        self.schedule = optim.Schedule(
            self.optimizer, config, self.steps_per_epoch, lr_device=device if graphs else None
        )
        self.graphed = cuda_graph.GraphedStep(self) if graphs else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.full_batch = config.optim.optimizer in optim.FULL_BATCH
        self.lbfgs = config.optim.optimizer == "lbfgs"
        self._lm_norm: Tensor | None = None  # the last gradient norm an LM step computed
        # on CUDA the optimizer is fused and skips non-finite steps itself (module docstring);
        # L-BFGS and Levenberg-Marquardt read their loss back in every trial anyway
        self.deferred = device.type == "cuda" and not use_scaler and not self.full_batch

    def shard_weight(self, n: int, step_in_epoch: int) -> float:
        """Loss weight of a rank's `n` samples: DDP averages the ranks' gradients, which is the
        global batch's mean only when the parts are equal; n * world / batch makes it exact for
        the last batch of an epoch too, whose parts may differ by one (1.0 in one process)."""
        if not self.dist.enabled:
            return 1.0
        batch = self.config.train.batch_size
        step_batch = min(batch, self.train_size - step_in_epoch * batch)
        return n * self.dist.world / step_batch

    def loss(
        self, x: Tensor, y: Tensor, *, eager: bool = False, local: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(objective with regulariser, the task's plain loss, `Task.step_stat`); `eager`
        bypasses torch.compile (hooks registered for one step would otherwise force
        recompiles); `local` bypasses DDP too, for a look at this rank's batch alone that
        starts no collective."""
        model = self.model if local else self.train_model if eager else self.forward_model
        if self.device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = self.amp_dtype
        # no cast cache: a CUDA graph capture must not keep casts made outside it (each weight
        # is used once per forward anyway)
        with torch.autocast(
            self.device.type, dtype=amp, enabled=amp is not None, cache_enabled=False
        ):
            out = model(x)  # (N, classes or targets)
        out = out.to(torch.promote_types(out.dtype, torch.float32))  # bf16 up, float64 kept
        train = self.config.train
        objective, loss = self.task.objective(out, y, train.label_smoothing, train.huber_delta)
        weight = self.config.kan.reg_weight
        if weight > 0:
            reg = sum(layer.regularization_loss() for layer in self.kan.values())
            objective = objective + weight * reg
        return objective, loss, self.task.step_stat(out, y)

    def __call__(self, x: Tensor, y: Tensor, *, eager: bool = False, weight: float = 1.0) -> Tensor:
        """One whole step on the device; its values packed for `PendingSteps` (what a CUDA
        graph captures). `weight` scales the objective: a rank's share of a global batch."""
        if self.full_batch:
            values = self._lbfgs_step(x, y, eager) if self.lbfgs else self._lm_step(x, y)
            if self.ema is not None:  # the weights evaluated and saved as best follow these too
                self.ema.update()
            return values
        objective, loss, correct = self.loss(x, y, eager=eager)
        if weight != 1.0:
            objective = objective * weight
        norm, ok = self._backward_and_step(objective)
        if self.ema is not None:
            self.ema.update()
        return PendingSteps.pack(loss, correct, norm, ok)

    def _backward_and_step(self, objective: Tensor) -> tuple[Tensor, Tensor]:
        """Backward, clip, optimizer step unless non-finite; returns (grad norm, ok) on device."""
        self.scaler.scale(objective).backward()
        self.scaler.unscale_(self.optimizer)  # no-op without fp16
        norm = self._clip()
        ok = torch.isfinite(objective)
        if not self.scaler.is_enabled():  # fp16 overflow is the scaler's business, not divergence
            ok = ok & torch.isfinite(norm)
        ok = self.dist.all_true(ok)  # one rank's non-finite loss skips the step on every rank
        if self.deferred:
            self.optimizer.found_inf = (~ok).float()  # the fused kernel skips the update on device
            self.optimizer.step()
        elif ok.item():  # CPU / MPS: nothing to stall; fp16: the scaler syncs here anyway
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, ok

    def _lbfgs_step(self, x: Tensor, y: Tensor, eager: bool) -> Tensor:
        """One L-BFGS step (`optim.lbfgs_iters` iterations, each with a strong-Wolfe line search,
        re-evaluating the batch): full-batch function fitting, pykan's default. The values
        reported are those of the first evaluation, at the weights the step starts from, as
        for the other optimizers; a non-finite start skips the step. No clipping: the line
        search sizes every move (clipping the first evaluation's gradient alone would bend only
        the first of its iterations). Never under DDP or AMP (the trainer and `precision` keep
        it to one process, unrounded)."""
        first: list[Tensor] = []

        def closure() -> Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            objective, loss, stat = self.loss(x, y, eager=eager)
            objective.backward()
            if not first:
                norm = self._norm()
                first.extend([loss, stat, norm, torch.isfinite(objective) & torch.isfinite(norm)])
            return objective

        closure()
        loss, stat, norm, ok = first
        if ok.item():
            self.optimizer.step(closure)
        self.optimizer.zero_grad(set_to_none=True)
        return PendingSteps.pack(loss, stat, norm, ok)

    def _lm_step(self, x: Tensor, y: Tensor) -> Tensor:
        """One Levenberg-Marquardt iteration on the whole batch (`levenberg_marquardt`). The
        values reported are those at the weights the step starts from, as for the other
        optimizers, taken from the residuals the step's Jacobian came with (a plain forward
        once the fit has converged and no Jacobian is computed); the norm is that of the
        objective's gradient 2Jᵀr (the last one computed, once converged)."""
        params = self.optimizer.param_groups[0]["params"]  # the order its step vector follows

        def system() -> least_squares.NormalEquations:
            return least_squares.normal_equations(self.model, params, x, y)

        def objective() -> Tensor:
            return self.loss(x, y, eager=True)[0]

        equations = self.optimizer.step(system, objective)
        if equations is None:
            with torch.no_grad():
                _, loss, stat = self.loss(x, y, eager=True)
        else:
            loss, stat = equations.loss, self.task.step_stat(y + equations.errors, y)
            self._lm_norm = 2 * equations.jtr.norm()
        norm = torch.zeros_like(loss) if self._lm_norm is None else self._lm_norm
        ok = torch.isfinite(loss) & torch.isfinite(norm)
        return PendingSteps.pack(loss, stat, norm.to(loss.dtype), ok)

    def _norm(self) -> Tensor:
        return torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])

    def _clip(self) -> Tensor:
        max_norm = self.config.train.clip_grad_norm
        if max_norm > 0:
            return torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        return self._norm()

    def evaluated_weights(self) -> contextlib.AbstractContextManager[None]:
        """The weights that validation and the test judge: the average when there is one."""
        return contextlib.nullcontext() if self.ema is None else self.ema.applied()

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entries of what the step runs on (see `checkpoint.py`)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": optim.portable_state(self.optimizer),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        optim.load_state(self.optimizer, state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])


def best_effort_compile(model: nn.Module, backend: Any = "inductor") -> Callable[[Tensor], Tensor]:
    """torch.compile(model) whose frames that Dynamo cannot trace run eagerly, with Dynamo's
    warning in the log, instead of ending the run: `train.compile` is a speed-up, not a
    condition. Seen on the H200 (torch 2.11): float32 training of `rapid_kan_lite` failed in
    Dynamo's tracing of the fused layer's autograd Function (an AssertionError in
    `overwrite_tensor_vt_proxy`), where bfloat16 compiles. The setting is Dynamo's own
    `suppress_errors`, patched around this model's calls only."""
    import torch._dynamo  # compiling imports it anyway; not at module import (engine start-up)

    compiled = torch.compile(model, backend=backend)

    def forward(x: Tensor) -> Tensor:
        with torch._dynamo.config.patch(suppress_errors=True):
            return compiled(x)

    return forward
