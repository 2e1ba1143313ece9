"""The model registry: sizes, shapes, parameter groups, grid ranges, errors, and learning."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from kan_engine.errors import ConfigError
from kan_engine.kan import KANLinear
from kan_engine.models import (
    MEMORY_SAFE_CHUNK,
    MODELS,
    build,
    count_params,
    kan_layers,
    param_groups,
)

torch.set_num_threads(1)

MNIST = (1, 28, 28)
SHAPES = [MNIST, (3, 32, 32), (1, 8, 8), (64,)]
RAPID_TARGETS = {"rapid_kan_lite": 8.3e6, "rapid_kan": 26.6e6, "rapid_kan_power": 58.5e6}
KAN_MODELS = [name for name in MODELS if name != "cnn"]


@pytest.fixture(scope="module")
def mnist_models() -> dict[str, nn.Module]:
    """Every model built once for 1x28x28 and 10 classes (the big ones are slow to initialise)."""
    torch.manual_seed(0)
    return {name: build(name, MNIST, 10) for name in MODELS}


def test_registry_lists_every_model_with_a_description() -> None:
    expected = {
        "rapid_kan_tiny",
        "rapid_kan_lite",
        "rapid_kan",
        "rapid_kan_power",
        "memory_safe_kan",
        "fast_exact_kan",
        "cnn",
        "kan",
        "rapid_kan_lite_mlp",
        "rapid_kan_mlp",
        "rapid_kan_power_mlp",
        "flat_kan",
        "flat_mlp",
    }
    assert set(MODELS) == expected
    assert all(desc and "\n" not in desc for desc in MODELS.values())


@pytest.mark.parametrize("name", list(RAPID_TARGETS))
def test_rapid_parameter_counts_match_the_notes(
    name: str, mnist_models: dict[str, nn.Module]
) -> None:
    counts = count_params(mnist_models[name])
    target = RAPID_TARGETS[name]
    print(f"{name}: {counts['total'] / 1e6:.2f} M (target {target / 1e6:.1f} M) {counts}")
    assert abs(counts["total"] - target) <= 0.1 * target
    assert counts["kan"] > 0.9 * counts["total"], "the budget belongs in the KAN layers"


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_on_the_1x28x28_fixture(name: str, mnist_models: dict[str, nn.Module]) -> None:
    out = mnist_models[name](torch.randn(2, *MNIST))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [s for s in SHAPES if s != MNIST], ids=str)
@pytest.mark.parametrize("name", list(MODELS))
def test_builds_and_runs_for_other_input_shapes(name: str, shape: tuple[int, ...]) -> None:
    model = build(name, shape, 7)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters()), "every parameter takes part"


@pytest.mark.parametrize("name", list(MODELS))
def test_groups_partition_the_trainable_parameters(
    name: str, mnist_models: dict[str, nn.Module]
) -> None:
    model = mnist_models[name]
    groups = param_groups(model)
    assert set(groups) == {"cnn", "kan", "other"}
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids)), "a parameter sits in two groups"
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    counts = count_params(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] == counts["cnn"] + counts["kan"] + counts["other"]
    assert bool(groups["kan"]) == (name != "cnn" and not name.endswith("_mlp"))


def _owned(
    model: nn.Module, kind: type[nn.Module] | tuple[type[nn.Module], ...]
) -> Iterator[tuple[str, nn.Parameter]]:
    for module in model.modules():
        if isinstance(module, kind):
            yield from module.named_parameters(recurse=False)


def test_group_tags_follow_the_owning_module(mnist_models: dict[str, nn.Module]) -> None:
    for name in ("rapid_kan_lite", "cnn"):
        model = mnist_models[name]
        groups = {g: {id(p) for p in params} for g, params in param_groups(model).items()}
        norms = list(_owned(model, (nn.BatchNorm1d, nn.BatchNorm2d)))
        assert norms and all(id(p) in groups["other"] for _, p in norms)
        layers = list(_owned(model, (nn.Conv2d, nn.Linear)))
        assert layers
        for pname, p in layers:
            assert id(p) in groups["cnn" if pname == "weight" else "other"], pname
    kan_weights = [
        p
        for layer in kan_layers(mnist_models["rapid_kan_lite"]).values()
        for n, p in layer.named_parameters()
        if n.endswith("weight")
    ]
    kan_group = {id(p) for p in param_groups(mnist_models["rapid_kan_lite"])["kan"]}
    assert kan_weights and all(id(p) in kan_group for p in kan_weights)


def test_frozen_parameters_are_left_out() -> None:
    model = build("kan", (64,), 3)
    first = kan_layers(model)["kan.0"]
    for p in first.parameters():
        p.requires_grad_(False)
    frozen = {id(p) for p in first.parameters()}
    assert not frozen & {id(p) for params in param_groups(model).values() for p in params}
    assert count_params(model)["total"] == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


def test_kan_layers_by_path(mnist_models: dict[str, nn.Module]) -> None:
    assert list(kan_layers(mnist_models["rapid_kan"])) == ["kan.0", "kan.1", "kan.2"]
    assert list(kan_layers(mnist_models["kan"])) == ["kan.0", "kan.1"]
    assert kan_layers(mnist_models["cnn"]) == {}
    assert all(
        isinstance(m, KANLinear) for m in kan_layers(mnist_models["rapid_kan_power"]).values()
    )


def test_options_reach_the_kan_layers() -> None:
    g, k = 8, 2
    model = build("fast_exact_kan", (16,), 3, grid_size=g, spline_order=k, grid_range=[-3, 3])
    layers = list(kan_layers(model).values())
    edges = 16 * 256 + 256 * 3
    assert count_params(model)["kan"] == edges * (g + k + 1)
    assert all(layer.grid_size == g and layer.spline_order == k for layer in layers)


def test_original_kan_keeps_pykan_like_defaults_unless_told() -> None:
    default = kan_layers(build("kan", (16,), 3))["kan.0"]
    told = kan_layers(build("kan", (16,), 3, scale_base=2.5))["kan.0"]
    rapid = kan_layers(build("rapid_kan_lite", (16,), 3))["kan.0"]
    assert default.scale_base == 1.0 and told.scale_base == 2.5 and rapid.scale_base == 2.5


def test_unknown_model_names_the_key_and_the_known_models() -> None:
    with pytest.raises(ConfigError) as err:
        build("resnet", MNIST, 10)
    assert err.value.key == "model.name"
    assert "unknown model 'resnet'" in err.value.reason
    assert "rapid_kan_lite" in err.value.reason


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        build("rapid_kan_lite", MNIST, 10, grid_sise=5)
    assert err.value.key == "kan.grid_sise"
    assert "grid_size" in err.value.reason


def test_cnn_accepts_and_ignores_kan_options() -> None:
    plain, told = build("cnn", MNIST, 10), build("cnn", MNIST, 10, grid_size=9, init="noise")
    assert count_params(plain) == count_params(told)


@pytest.mark.parametrize("name", [*RAPID_TARGETS, "memory_safe_kan", "fast_exact_kan"])
def test_kan_inputs_stay_inside_the_grid(name: str, mnist_models: dict[str, nn.Module]) -> None:
    """BatchNorm alone leaves about 4 % outside [-2, 2]; the squash must bring it under 1 %."""
    torch.manual_seed(1)
    model = mnist_models[name].train()
    with torch.no_grad():
        model(torch.randn(64, *MNIST) * 3 + 1)  # badly scaled standardized-ish images
    shares = {path: layer.outside_grid_share() for path, layer in kan_layers(model).items()}
    assert max(shares.values()) < 0.01, shares


def test_memory_safe_kan_chunks_and_stays_exact() -> None:
    """Chunked rows give the same outputs and gradients as one pass over the whole batch."""
    torch.manual_seed(2)
    model = build("memory_safe_kan", (1, 8, 8), 5).double().eval()
    layers = kan_layers(model).values()
    assert {layer.chunk_size for layer in layers} == {MEMORY_SAFE_CHUNK}
    x = torch.randn(2 * MEMORY_SAFE_CHUNK + 37, 1, 8, 8, dtype=torch.float64)
    chunked = model(x)
    grads = torch.autograd.grad(chunked.square().sum(), list(model.parameters()))
    for layer in layers:
        layer.chunk_size = None
    whole = model(x)
    torch.testing.assert_close(chunked, whole)
    whole_grads = torch.autograd.grad(whole.square().sum(), list(model.parameters()))
    for g, w in zip(grads, whole_grads, strict=True):
        torch.testing.assert_close(g, w)
    fast = kan_layers(build("fast_exact_kan", (8,), 2)).values()
    assert {layer.chunk_size for layer in fast} == {None}


def test_rapid_kan_lite_fits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = build("rapid_kan_lite", MNIST, 10)
    x, y = torch.randn(32, *MNIST), torch.randint(0, 10, (32,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_flat_models_take_the_width_list_and_check_its_ends() -> None:
    kan = build("flat_kan", (2,), 1, width=[2, 5, 1])
    assert [layer.out_features for layer in kan.kan] == [5, 1]
    assert kan(torch.zeros(4, 2)).shape == (4, 1)
    mlp = build("flat_mlp", (2,), 1, width=[2, 5, 1])
    kan_size, mlp_size = count_params(kan)["total"], count_params(mlp)["total"]
    assert abs(mlp_size - kan_size) / kan_size < 0.2  # matched size
    for width in ([3, 5, 1], [2, 5, 2], [2]):
        with pytest.raises(ConfigError, match="model.width"):
            build("flat_kan", (2,), 1, width=width)
    with pytest.raises(ConfigError, match="model.width"):
        build("rapid_kan_lite", (2,), 1, width=[2, 1])
