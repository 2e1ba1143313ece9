"""The model registry: every model is a builder registered under its name in the catalogue.

The names and their one-line descriptions are `kan_engine.names.MODELS` (torch-free, so a config
is checked without this module); `MODELS` here is that same dict, which the CLI and the TUI list.
A run builds its model with `build(name, input_shape, num_classes, **options)`, where `options`
are the `[kan]` preset fields a model uses (`config.MODEL_OPTIONS`). Each model tags its
parameters into the groups `cnn`, `kan` and `other` (`param_groups`), so the optimizer can give
each group its own learning rate.

Sizes of the Rapid KAN models are set so that, for a 1x28x28 input and 10 classes at the preset
defaults (grid_size 5, spline_order 3), they match the notes' 8.3 M / 26.6 M / 58.5 M parameters.
A KAN layer holds in * out * (grid_size + spline_order + 1) parameters (spline coefficients plus the
base weight), so nearly all of the budget sits in the KAN layers; the CNN front ends stay small
because their job is only to turn pixels into well-conditioned features.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kan_engine import names
from kan_engine.config import MODEL_OPTIONS, KanSection
from kan_engine.errors import ConfigError
from kan_engine.kan import KANLinear

__all__ = [
    "MODELS",
    "GridSquash",
    "KanClassifier",
    "build",
    "count_params",
    "build_from",
    "kan_layers",
    "load",
    "param_groups",
    "register",
]

Shape = tuple[int, ...]
Options = dict[str, Any]
Builder = Callable[[Shape, int, Options], nn.Module]

MODELS = names.MODELS  # name -> description: the catalogue, so a name is written once
DTYPES = {"float32": torch.float32, "float64": torch.float64}  # `train.dtype`: the weights'
_BUILDERS: dict[str, Builder] = {}

# The `[kan]` preset fields a model may use. Every model accepts all of them (the trainer passes the
# whole section), a model that has no KAN layer simply ignores them.
OPTION_NAMES = MODEL_OPTIONS

# Defaults of the tuned models: the preset's `[kan]` defaults (strong base, identity-like start).
RAPID_DEFAULTS: dict[str, Any] = KanSection().build_options()
# Defaults of the "original KAN" baseline: pykan-like, no tricks.
ORIGINAL_DEFAULTS: dict[str, Any] = {
    **RAPID_DEFAULTS,
    "grid_range": (-1.0, 1.0),
    "scale_base": 1.0,
    "init": "noise",
}

# The models that take `model.width`, and their hidden layer when it is not given.
WIDTH_MODELS = ("flat_kan", "flat_mlp")
DEFAULT_HIDDEN = 5
# Rows of the batch that the memory-safe model's KAN layers process at a time.
MEMORY_SAFE_CHUNK = 256
# Spatial size every CNN front end pools to, so that any input size gives the same feature count.
POOLED = 4


def register(description: str | None = None) -> Callable[[Builder], Builder]:
    """Register a builder under its function name (timm-style). A built-in model's name and
    description are in the catalogue (`kan_engine.names`); a model added from outside brings its
    own one-line `description`, and is known only once this module is imported."""

    def decorate(builder: Builder) -> Builder:
        name = builder.__name__
        if description is not None:
            MODELS[name] = description
        elif name not in MODELS:
            raise ValueError(f"register: {name!r} is not in kan_engine.names.MODELS")
        _BUILDERS[name] = builder
        return builder

    return decorate


def build(name: str, input_shape: Sequence[int], num_classes: int, **options: Any) -> nn.Module:
    """Build a registered model for inputs of `input_shape` ((C, H, W) or (features,)).

    Options override the model's own defaults, so a baseline keeps its pykan-like settings unless
    the caller says otherwise.
    """
    if name not in _BUILDERS:
        raise ConfigError("", "model.name", names.unknown("model", repr(name), MODELS))
    width = options.pop("width", None)
    if width is not None and name not in WIDTH_MODELS:
        reason = f"only {' and '.join(WIDTH_MODELS)} take a width list (model {name!r} has its own)"
        raise ConfigError("", "model.width", reason)
    for key in options:
        if key not in OPTION_NAMES:
            raise ConfigError(
                "",
                f"kan.{key}",
                f"unknown option for model {name!r} (known: {', '.join(OPTION_NAMES)})",
            )
    shape = tuple(int(d) for d in input_shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(
            f"input_shape must be (C, H, W) or (features,) with sizes >= 1 (got {shape})"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes (outputs) must be >= 1 (got {num_classes})")
    if name in WIDTH_MODELS:
        options = {**options, "width": _widths(width, math.prod(shape), num_classes)}
    return _BUILDERS[name](shape, num_classes, options)


def _widths(width: Sequence[int] | None, inputs: int, outputs: int) -> list[int]:
    """`model.width` checked against the data: it starts with the inputs, ends with the
    outputs (a mistake here would otherwise surface as a matmul shape error)."""
    if not width:
        return [inputs, DEFAULT_HIDDEN, outputs]
    width = list(width)
    if len(width) < 2 or width[0] != inputs or width[-1] != outputs:
        reason = (
            f"{width} must run from the data's {inputs} input(s) to its {outputs} output(s), "
            f"e.g. [{inputs}, {DEFAULT_HIDDEN}, {outputs}]"
        )
        raise ConfigError("", "model.width", reason)
    return width


def build_from(args: dict[str, Any]) -> nn.Module:
    """`build` from a run's build arguments (`run_setup.model_args`: name, input_shape,
    num_classes, options, dtype), as training makes them and an export's JSON keeps them."""
    model = build(args["name"], args["input_shape"], args["num_classes"], **args["options"])
    return model.to(DTYPES[args["dtype"]])


def load(path: Path | str) -> nn.Module:
    """A model exported by `kan-tui export --format safetensors`, in eval mode on the CPU: built
    from the JSON beside the weights and loaded from them without pickle (nothing in the files
    can run). `path` is the .safetensors file or its .json. ConfigError names the file and the
    reason when either is missing, damaged, or the weights do not fit the model."""
    from kan_engine import portable

    weights = Path(path).with_suffix(portable.SUFFIX)
    args, state = portable.read(weights)
    source = str(portable.sidecar(weights))
    model = _built(args, source)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:240]
        raise ConfigError(
            str(weights), "", f"does not fit the model of {source}: {reason}"
        ) from None
    return model.eval()


def _built(args: dict[str, Any], source: str) -> nn.Module:
    """`build_from` with its refusals named by the JSON they came from."""
    try:
        return build_from(args)
    except ConfigError as exc:
        raise ConfigError(source, exc.key, exc.reason) from None
    except ValueError as exc:
        raise ConfigError(source, "model", str(exc)) from None


class GridSquash(nn.Module):
    """Map any input into the grid interval (low, high) with a slope-1 tanh around its centre.

    BatchNorm alone leaves about 4 % of a layer's inputs beyond a [-2, 2] grid (measured on
    Fashion-MNIST and on random images, at initialisation; the tails reach 20 standard deviations),
    where a B-spline has no support and only the base branch learns. The squash is the identity near
    the centre (within 10 % of x for |x| <= 1.1 on [-2, 2]) and bounds the rest, which also caps the
    gradients that outliers send into the spline coefficients. Its bound sits `margin` (a share of
    the half-width) inside the grid so that a saturated tanh, rounded in bf16, stays inside too.
    """

    def __init__(self, low: float, high: float, margin: float = 0.01) -> None:
        super().__init__()
        self.centre = (low + high) / 2
        self.half = (high - low) / 2 * (1 - margin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.centre + self.half * torch.tanh((x - self.centre) / self.half)

    def extra_repr(self) -> str:
        return f"centre={self.centre}, half_width={self.half}"


class KanClassifier(nn.Module):
    """front end -> [BatchNorm1d -> GridSquash -> KANLinear] per layer (or bare KAN layers).

    The KAN layers sit in `self.kan` so their module paths read `kan.0`, `kan.1`, ...; the norms
    that keep each layer's input inside its grid sit beside them in `self.norms`.
    """

    def __init__(
        self,
        front: nn.Module,
        in_features: int,
        widths: Sequence[int],
        *,
        normalize: bool,
        kan_options: dict[str, Any],
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.front = front
        dims = [in_features, *widths]
        low, high = kan_options["grid_range"]
        self.norms = nn.ModuleList(
            nn.Sequential(nn.BatchNorm1d(d), GridSquash(low, high)) if normalize else nn.Identity()
            for d in dims[:-1]
        )
        extra = {} if chunk_size is None else {"chunk_size": chunk_size}
        self.kan = nn.ModuleList(
            KANLinear(i, o, **kan_options, **extra)
            for i, o in zip(dims[:-1], dims[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.front(x)  # (N, F)
        for norm, layer in zip(self.norms, self.kan, strict=True):
            x = layer(norm(x))  # (N, width)
        return x  # (N, num_classes)


def _conv_front(in_channels: int, channels: Sequence[int], depth: int) -> nn.Sequential:
    """`depth` x conv3x3-BN-ReLU, then maxpool, per stage; then adaptive pooling to
    POOLED x POOLED and flatten.

    `ceil_mode` keeps a 1x1 map alive through the pools, and the adaptive pool makes the feature
    count independent of the input size (28x28, 32x32, 8x8 all give channels[-1] * 16 features).
    """
    layers: list[nn.Module] = []
    c_in = in_channels
    for c_out in channels:
        for _ in range(depth):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),  # (N, c_out, H, W)
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        layers.append(nn.MaxPool2d(2, ceil_mode=True))  # (N, c_out, ceil(H/2), ceil(W/2))
    layers += [nn.AdaptiveAvgPool2d(POOLED), nn.Flatten()]  # (N, channels[-1] * POOLED**2)
    return nn.Sequential(*layers)


def _front(
    input_shape: tuple[int, ...], channels: Sequence[int], depth: int = 1
) -> tuple[nn.Module, int]:
    """A CNN front end for images; feature vectors go straight on (there is nothing to convolve)."""
    if len(input_shape) == 3:
        return _conv_front(input_shape[0], channels, depth), channels[-1] * POOLED**2
    return nn.Flatten(), input_shape[0]


class MlpHead(nn.Sequential):
    """[BatchNorm1d -> Linear -> ReLU] per hidden layer, then BatchNorm1d -> Linear: the
    Rapid KAN head with each KAN layer replaced by a Linear layer (the same-shape control)."""

    def __init__(self, in_features: int, widths: Sequence[int]) -> None:
        layers: list[nn.Module] = []
        dims = [in_features, *widths]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers += [nn.BatchNorm1d(d_in), nn.Linear(d_in, d_out)]  # (N, d_out)
            if i < len(widths) - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def _mlp_params(in_features: int, widths: Sequence[int]) -> int:
    dims = [in_features, *widths]
    return sum(2 * i + i * o + o for i, o in zip(dims[:-1], dims[1:], strict=True))


def _plain_mlp_params(in_features: int, widths: Sequence[int]) -> int:
    """Linear layers alone (weights and biases), no BatchNorm: `FlatMlp`'s size."""
    dims = [in_features, *widths]
    return sum(i * o + o for i, o in zip(dims[:-1], dims[1:], strict=True))


def matched_widths(
    in_features: int,
    hidden: Sequence[int],
    num_classes: int,
    target: int,
    size: Callable[[int, Sequence[int]], int] = _mlp_params,
) -> list[int]:
    """Hidden widths proportional to `hidden` whose MLP (`size` counts its parameters) holds
    about `target` parameters (bisection on the common factor; the size grows with it)."""
    low, high = 1e-3, 1e4
    for _ in range(100):
        mid = (low + high) / 2
        widths = [max(1, round(w * mid)) for w in hidden]
        if size(in_features, [*widths, num_classes]) < target:
            low = mid
        else:
            high = mid
    return [max(1, round(w * high)) for w in hidden]


def _options(options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    merged = {**defaults, **options}
    merged["grid_range"] = tuple(float(v) for v in merged["grid_range"])
    return merged


# Rapid KAN shapes: CNN channels per stage, convolutions per stage, KAN hidden widths.
RAPID_SHAPES: dict[str, tuple[tuple[int, ...], int, tuple[int, ...]]] = {
    "rapid_kan_tiny": ((16, 32), 1, (128,)),
    "rapid_kan_lite": ((32, 64), 2, (896,)),
    "rapid_kan": ((64, 128, 128), 2, (1152, 512)),
    "rapid_kan_power": ((64, 128, 256), 2, (1400, 512)),
}
# Two convolutions per stage: a front end worth its (few) parameters. With one per stage the
# largest model was no better than the smallest (issue 14: 91.8-92.2 % test for all three).
# The tiny model keeps one: it is sized for an epoch in seconds on a laptop's CPU.


def _rapid(
    name: str, input_shape: tuple[int, ...], num_classes: int, options: dict[str, Any]
) -> KanClassifier:
    channels, depth, hidden = RAPID_SHAPES[name]
    front, features = _front(input_shape, channels, depth)
    return KanClassifier(
        front,
        features,
        [*hidden, num_classes],
        normalize=True,
        kan_options=_options(options, RAPID_DEFAULTS),
    )


def _rapid_mlp(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The Rapid KAN `name` with its KAN head replaced by an MLP head of the same parameter
    count: what the KAN head buys over a plain head on the same front end."""
    channels, depth, hidden = RAPID_SHAPES[name]
    front, features = _front(input_shape, channels, depth)
    per_edge = RAPID_DEFAULTS["grid_size"] + RAPID_DEFAULTS["spline_order"] + 1
    dims = [features, *hidden, num_classes]
    # the KAN head's size: BatchNorm (2 per input) and per_edge coefficients per edge
    target = sum(2 * i + i * o * per_edge for i, o in zip(dims[:-1], dims[1:], strict=True))
    widths = matched_widths(features, hidden, num_classes, target)
    return nn.Sequential(front, MlpHead(features, [*widths, num_classes]))


def _flat_kan(
    input_shape: tuple[int, ...],
    widths: Sequence[int],
    options: dict[str, Any],
    *,
    defaults: dict[str, Any] = RAPID_DEFAULTS,
    normalize: bool = True,
    chunk_size: int | None = None,
) -> KanClassifier:
    """KAN layers straight on the flattened input (no CNN front end)."""
    return KanClassifier(
        nn.Flatten(),
        math.prod(input_shape),
        widths,
        normalize=normalize,
        kan_options=_options(options, defaults),
        chunk_size=chunk_size,
    )


@register()
def rapid_kan_tiny(input_shape: Shape, num_classes: int, options: Options) -> nn.Module:
    return _rapid("rapid_kan_tiny", input_shape, num_classes, options)


@register()
def rapid_kan_lite(input_shape: Shape, num_classes: int, options: Options) -> nn.Module:
    return _rapid("rapid_kan_lite", input_shape, num_classes, options)


@register()
def rapid_kan(input_shape: Shape, num_classes: int, options: Options) -> nn.Module:
    return _rapid("rapid_kan", input_shape, num_classes, options)


@register()
def rapid_kan_power(input_shape: Shape, num_classes: int, options: Options) -> nn.Module:
    return _rapid("rapid_kan_power", input_shape, num_classes, options)


@register()
def rapid_kan_lite_mlp(input_shape: Shape, num_classes: int, options: Options) -> nn.Module:
    return _rapid_mlp("rapid_kan_lite", input_shape, num_classes)


@register()
def rapid_kan_mlp(input_shape: Shape, num_classes: int, options: Options) -> nn.Module:
    return _rapid_mlp("rapid_kan", input_shape, num_classes)


@register()
def rapid_kan_power_mlp(input_shape: Shape, num_classes: int, options: Options) -> nn.Module:
    return _rapid_mlp("rapid_kan_power", input_shape, num_classes)


@register()
def memory_safe_kan(input_shape: Shape, num_classes: int, options: Options) -> nn.Module:
    return _flat_kan(input_shape, [256, 128, num_classes], options, chunk_size=MEMORY_SAFE_CHUNK)


@register()
def fast_exact_kan(input_shape: Shape, num_classes: int, options: Options) -> nn.Module:
    return _flat_kan(input_shape, [256, num_classes], options)


@register()
def flat_kan(input_shape: Shape, num_classes: int, options: Options) -> nn.Module:
    width = options.pop("width")
    return _flat_kan(input_shape, width[1:], options, normalize=False)


@register()
def flat_mlp(input_shape: Shape, num_classes: int, options: Options) -> nn.Module:
    width = options.pop("width")
    per_edge = options.get("grid_size", RAPID_DEFAULTS["grid_size"]) + options.get(
        "spline_order", RAPID_DEFAULTS["spline_order"]
    ) + 1  # fmt: skip
    target = sum(i * o * per_edge for i, o in zip(width[:-1], width[1:], strict=True))
    return FlatMlp(width, target)


class FlatMlp(nn.Sequential):
    """Linear -> SiLU per hidden layer, then Linear: `width`'s depth, the hidden layers widened
    in proportion until the network holds about `target` parameters (a KAN of that width's),
    so the comparison with flat_kan is at equal size."""

    def __init__(self, width: Sequence[int], target: int) -> None:
        inputs, hidden, outputs = width[0], list(width[1:-1]), width[-1]
        matched = matched_widths(inputs, hidden, outputs, target, _plain_mlp_params)
        dims = [inputs, *matched, outputs]
        layers: list[nn.Module] = [nn.Flatten()]
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), nn.SiLU()]
        super().__init__(*layers[:-1])


@register()
def cnn(input_shape: Shape, num_classes: int, options: Options) -> nn.Module:
    front, features = _front(input_shape, (32, 64))
    return nn.Sequential(
        front,  # (N, features)
        nn.Linear(features, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, num_classes),  # (N, num_classes)
    )


@register()
def kan(input_shape: Shape, num_classes: int, options: Options) -> nn.Module:
    return _flat_kan(
        input_shape, [64, num_classes], options, defaults=ORIGINAL_DEFAULTS, normalize=False
    )


names.check_complete(MODELS, set(_BUILDERS), "kan_engine.models")


def _tagged(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(group, parameter) for every parameter under `module`, tagged by the module that owns it.

    Weights of a KAN layer (anything it holds named `*weight`, even inside sub-modules) are `kan`;
    its scales and biases are `other`. Conv and Linear weights are `cnn`; biases, norms and anything
    else are `other`.
    """
    if isinstance(module, KANLinear):
        for name, param in module.named_parameters():
            yield ("kan" if name.rsplit(".", 1)[-1].endswith("weight") else "other"), param
        return
    own = "cnn" if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) else "other"
    for name, param in module.named_parameters(recurse=False):
        yield (own if name == "weight" else "other"), param
    for child in module.children():
        yield from _tagged(child)


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by group (`cnn`, `kan`, `other`); each one appears exactly once."""
    groups: dict[str, list[nn.Parameter]] = {"cnn": [], "kan": [], "other": []}
    seen: set[int] = set()
    for group, param in _tagged(model):
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            groups[group].append(param)
    return groups


def kan_layers(model: nn.Module) -> dict[str, KANLinear]:
    """The KAN layers by module path (e.g. `kan.0`), for grid updates and range monitoring."""
    return {name: m for name, m in model.named_modules() if isinstance(m, KANLinear)}


def count_params(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts per group, plus `total`."""
    counts = {
        group: sum(p.numel() for p in params) for group, params in param_groups(model).items()
    }
    counts["total"] = sum(counts.values())
    return counts
