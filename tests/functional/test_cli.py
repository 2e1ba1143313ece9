"""The `kan-tui` command line, through the real Typer app: presets, precedence, and bad input.

Every bad input must end in exit 2 and exactly one line on stderr naming the source (file or
option), the key and the reason, with no traceback unless --debug. Runs are never started here:
`run --print-config` resolves and validates exactly as a run does, then prints the config.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from kan_engine import presets_io
from kan_engine.config import validate_config
from kan_tui.cli import app
from kan_tui.options import OPTION_KEYS, describe, flags


@pytest.fixture(autouse=True)
def _isolated(isolated: Path) -> Path:
    """Every CLI test runs isolated (the shared `isolated` fixture)."""
    return isolated


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def resolved(*args: str) -> dict:
    result = cli("run", "--print-config", *args)
    assert result.exit_code == 0, result.output
    return tomllib.loads(result.stdout)


def assert_user_error(result: Result, *fragments: str) -> str:
    """Exit 2, one `error:` line on stderr holding every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_help_lists_commands_and_aliases() -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("run", "resume", "eval", "models", "presets"):
        assert command in result.stdout
    run_help = cli("run", "--help").stdout
    assert "--batch-size, --batch_size" in run_help
    assert "(optim.lr)" in run_help  # help texts come from the schema


def test_version() -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("kan-tui 0.")


def test_every_option_maps_to_a_schema_key() -> None:
    for name, key in OPTION_KEYS.items():
        assert f"({key})" in describe(key)
        assert flags(name)[0] == "--" + name.replace("_", "-")


def test_precedence_preset_then_set_then_named_option() -> None:
    lite, power = (presets_io.resolve(name)[0] for name in ("lite", "power"))
    assert resolved()["optim"]["lr"] == lite.optim.lr  # the default preset
    assert resolved("--set", "optim.lr=0.02")["optim"]["lr"] == 0.02
    config = resolved("--set", "optim.lr=0.02", "--lr", "0.03", "--set", "train.patience=4")
    assert config["optim"]["lr"] == 0.03
    assert config["train"]["patience"] == 4
    assert resolved("-p", "power")["train"]["batch_size"] == power.train.batch_size


def test_notes_spellings_are_aliases() -> None:
    config = resolved(
        "--model", "rapid_kan", "--epochs", "50", "--batch_size", "32", "--lr", "0.003",
        "--optimizer", "adamw", "--weight_decay", "0.02", "--scheduler", "onecycle",
        "--patience", "15", "--warmup_epochs", "3", "--clip_grad_norm", "2",
        "--prob_update_grid", "0.2", "--mixed_precision", "off", "--data_dir", "d",
    )  # fmt: skip
    assert config["model"]["name"] == "rapid_kan"
    assert config["train"]["batch_size"] == 32
    assert config["optim"]["weight_decay"] == 0.02
    assert config["schedule"] == config["schedule"] | {"name": "onecycle", "warmup_epochs": 3.0}
    assert config["train"]["clip_grad_norm"] == 2.0
    assert config["kan"]["prob_update_grid"] == 0.2
    assert config["train"]["mixed_precision"] == "off"
    assert config["data"]["data_dir"] == "d"


def test_options_that_only_agree_together_are_accepted() -> None:
    # lite warms up for 5 epochs: --epochs 3 alone is accepted (the trainer caps the warm-up)
    assert resolved("--epochs", "3")["train"]["epochs"] == 3
    config = resolved("--epochs", "3", "--warmup-epochs", "1")
    assert (config["train"]["epochs"], config["schedule"]["warmup_epochs"]) == (3, 1.0)


def test_print_config_is_a_loadable_preset(isolated: Path) -> None:
    text = cli("run", "--print-config", "--lr", "0.01").stdout
    path = isolated / "mine.toml"
    path.write_text(text)
    assert resolved("-p", str(path))["optim"]["lr"] == 0.01


def test_presets_round_trip(isolated: Path) -> None:
    saved = cli("presets", "save", "mine", "--from", "standard", "--set", "optim.lr=0.005")
    assert saved.exit_code == 0, saved.output
    assert (isolated / "config" / "presets" / "mine.toml").is_file()

    listing = cli("presets", "list").stdout
    rows = {line.split()[0]: line.split()[1] for line in listing.splitlines()[1:] if line.strip()}
    assert rows["lite"] == "built-in" and rows["mine"] == "user"
    assert cli("presets", "path").stdout.strip() == str(isolated / "config" / "presets")

    shown = validate_config(tomllib.loads(cli("presets", "show", "mine").stdout))
    standard = presets_io.resolve("standard")[0]
    assert shown.optim.lr == 0.005 and shown.train == standard.train  # the rest is standard's

    assert_user_error(cli("presets", "save", "mine"), "exists", "--force")
    assert cli("presets", "save", "mine", "--force", "--set", "optim.lr=0.006").exit_code == 0
    assert resolved("-p", "mine")["optim"]["lr"] == 0.006

    assert cli("presets", "delete", "mine").exit_code == 0
    assert_user_error(cli("presets", "show", "mine"), "unknown preset 'mine'")
    assert_user_error(cli("presets", "delete", "mine"), "no user preset 'mine'")


@pytest.mark.parametrize("name", ["lite", "standard", "power"])
def test_show_prints_valid_toml(name: str) -> None:
    result = cli("presets", "show", name)
    assert result.exit_code == 0
    assert validate_config(tomllib.loads(result.stdout)) == presets_io.resolve(name)[0]


# (file contents, fragments of the one error line besides the file name)
BAD_FILES = {
    "syntax": (b"[optim]\nlr = = 0.1\n", ["TOML syntax error", "line 2, column"]),
    "empty": (b"  \n", ["file is empty"]),
    "binary": (bytes(range(256)) * 4, ["not a text file"]),
    "string_lr": (b'[optim]\nlr = "fast"\n', ["optim.lr", "valid number", "'fast'"]),
    "zero_lr": (b"[optim]\nlr = 0.0\n", ["optim.lr", "greater than 0"]),
    "huge_lr": (b"[optim]\nlr = 1e9\n", ["optim.lr", "less than or equal"]),
    "nan_lr": (b"[optim]\nlr = nan\n", ["optim.lr", "finite"]),
    "inf_wd": (b"[optim]\nweight_decay = inf\n", ["optim.weight_decay", "finite"]),
    "batch_0": (b"[train]\nbatch_size = 0\n", ["train.batch_size", "greater than or equal to 2"]),
    "batch_1e12": (b"[train]\nbatch_size = 1000000000000\n", ["train.batch_size", "less than"]),
    "neg_epochs": (b"[train]\nepochs = -3\n", ["train.epochs", "greater than or equal to 1"]),
    "unknown_key": (b"[train]\nepochz = 3\n", ["train.epochz", "unknown key"]),
    "unknown_section": (b"[trian]\nepochs = 3\n", ["trian", "unknown key"]),
    "unknown_model": (b'[model]\nname = "resnet"\n', ["model.name", "unknown model 'resnet'"]),
    "unknown_dataset": (b'[data]\ndataset = "imagenet"\n', ["data.dataset", "unknown dataset"]),
    "unknown_optimizer": (b'[optim]\noptimizer = "lion"\n', ["optim.optimizer", "'lion'"]),
    "unknown_scheduler": (b'[schedule]\nname = "poly"\n', ["schedule.name", "'poly'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_preset_file(case: str, isolated: Path) -> None:
    contents, fragments = BAD_FILES[case]
    path = isolated / f"{case}.toml"
    path.write_bytes(contents)
    assert_user_error(cli("run", "--print-config", "-p", str(path)), str(path), *fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--lr", "fast"], ["--lr: optim.lr:", "valid number", "'fast'"]),
        (["--lr", "-0.1"], ["--lr: optim.lr:", "greater than 0", "'-0.1'"]),
        (["--lr", "nan"], ["--lr: optim.lr:", "finite"]),
        (["--lr", "inf"], ["--lr: optim.lr:", "finite"]),
        (["--batch-size", "0"], ["--batch-size: train.batch_size:", "greater than or equal"]),
        (["--batch_size", "1000000000000"], ["--batch-size: train.batch_size:", "less than"]),
        (["--epochs", "-3"], ["--epochs: train.epochs:", "greater than or equal to 1"]),
        (["--epochs", "2.5"], ["--epochs: train.epochs:", "integer"]),
        (["--model", "resnet"], ["--model: model.name:", "unknown model", "rapid_kan_lite"]),
        (["--dataset", "imagenet"], ["--dataset: data.dataset:", "unknown dataset"]),
        (["--optimizer", "lion"], ["--optimizer: optim.optimizer:", "'lion'"]),
        (["--scheduler", "poly"], ["--scheduler: schedule.name:", "'poly'"]),
        (["--device", "gpu"], ["--device: train.device:", "cuda:N"]),
        (["--set", "optim.lrr=1"], ["--set: optim.lrr: unknown key"]),
        (["--set", "optim.lr=nan"], ["--set: optim.lr:", "finite"]),
        (["--set", "optim"], ["--set: optim:", "section.key=value"]),
        (["-p", "nope"], ["unknown preset 'nope'", "lite"]),
        (["-p", "missing.toml"], ["missing.toml: file not found"]),
        (["-p", "../x"], ["../x: file not found"]),
        (["-p", "/abs"], ["/abs: file not found"]),
    ],
)
def test_bad_option(args: list[str], fragments: list[str]) -> None:
    assert_user_error(cli("run", "--print-config", *args), *fragments)


def test_preset_path_that_is_a_folder(isolated: Path) -> None:
    assert_user_error(cli("run", "-p", str(isolated)), str(isolated), "is a folder")


@pytest.mark.parametrize("name", ["../x", "/abs", "Caps", "a/b"])
def test_preset_names_cannot_leave_their_folder(name: str, isolated: Path) -> None:
    assert_user_error(cli("presets", "save", name), "preset name", "invalid")
    assert not list(isolated.rglob("*.toml"))


@pytest.mark.parametrize("command", ["save", "delete"])
def test_built_in_presets_are_read_only(command: str) -> None:
    assert_user_error(
        cli("presets", command, "lite", *(["--force"] * (command == "save"))), "built-in"
    )


def test_contradictory_options() -> None:
    assert_user_error(
        cli("run", "--print-config", "--set", "optim.lr=0.1", "--set", "optim.lr=0.2"),
        "--set: optim.lr: given twice with different values",
    )
    assert_user_error(
        cli("run", "--print-config", "--dataset", "digits", "--target", "label"),
        "--target: data.target: only applies to csv",
    )
    # repeating the same value is not a contradiction, nor are TUI-only options with --headless
    assert (
        resolved("--set", "optim.lr=0.1", "--set", "optim.lr=0.1", "--no-mouse")["optim"]["lr"]
        == 0.1
    )
    # resume continues a run as it was configured: it takes no preset (Typer's usage error, exit 2)
    assert cli("resume", "somewhere", "--preset", "lite").exit_code == 2


def test_out_must_be_a_folder(isolated: Path) -> None:
    (isolated / "file").write_text("x")
    assert_user_error(cli("run", "--headless", "--out", "file"), "--out:", "not a folder")


def test_debug_shows_the_traceback() -> None:
    for args in (["--debug", "run", "--lr", "-1"], ["run", "--lr", "-1", "--debug"]):
        result = cli(*args, "--print-config")
        assert result.exit_code == 2
        assert "Traceback" in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: --lr: optim.lr:")


def test_models_lists_the_registry_with_parameter_counts() -> None:
    from kan_engine.models import MODELS

    result = cli("models")
    assert result.exit_code == 0, result.output
    counts = {}
    for line in result.stdout.splitlines()[1:]:
        name, params, *_ = line.split()
        counts[name] = int(params.replace(",", ""))
    assert set(counts) == set(MODELS)
    assert counts["rapid_kan_lite"] < counts["rapid_kan"] < counts["rapid_kan_power"]


@pytest.mark.parametrize("device", ["sprint", "cpu"])
def test_preset_auto_is_sprint_on_a_gpu_and_cpu_elsewhere(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(presets_io, "auto_preset", lambda: device)
    auto, picked = cli("run", "--preset", "auto", "--print-config"), cli("presets", "show", device)
    assert auto.exit_code == 0 and auto.stdout == picked.stdout
    assert presets_io.resolve("auto")[1] == device  # runs are labelled by the preset picked


@pytest.mark.parametrize("command", [["save", "auto", "--from", "lite"], ["delete", "auto"]])
def test_auto_cannot_be_a_user_preset(command: list[str]) -> None:
    result = cli("presets", *command)
    assert result.exit_code == 2
    assert "'auto' is a built-in preset" in result.output
