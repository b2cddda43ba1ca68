"""The `fingerspell` command: its three entry forms, help without the heavy extras, config, old flag names."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fingerspell import cli
from fingerspell.config import Config

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ["preprocess", "train", "export", "evaluate", "predict", "extract", "transcribe", "render", "synth", "demo",
            "letters"]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


def test_top_level_help_lists_every_command(capsys):
    assert sorted(cli.COMMANDS) == sorted(COMMANDS)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(f"    {name}" in out for name in COMMANDS)


def test_every_help_works_without_the_heavy_extras(subprocess_env):
    """Each command's parser and help, with TensorFlow, Keras, MediaPipe and OpenCV made unimportable."""
    code = (
        "import sys\n"
        "for name in ('tensorflow', 'keras', 'mediapipe', 'cv2', 'pose_format'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        "from fingerspell import cli\n"
        "cli.build_parser().format_help()\n"
        "for name in cli.COMMANDS:\n"
        "    assert name in cli.command_parser(name).format_help()\n"
        "try:\n"
        "    cli.main(['train', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "heavy = [m for m in sys.modules if sys.modules[m] is not None\n"
        "         and m.split('.')[0] in ('tensorflow', 'keras', 'mediapipe', 'cv2', 'matplotlib')]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n")
    done = run(["-c", code], subprocess_env)
    assert done.returncode == 0 and done.stdout.endswith("ok\n"), done.stderr


@pytest.mark.parametrize("form", [["-m", "fingerspell"], ["-m", "preprocess"], ["-m", "train"], ["-m", "export"]])
def test_help_through_each_entry_form(form, subprocess_env):
    command = form[1] if form[1] != "fingerspell" else "synth"
    args = [*form, "synth", "--help"] if form[1] == "fingerspell" else [*form, "--help"]
    done = run(args, subprocess_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {form[1]}")
    shared = cli.command_parser(command, prog="X").format_help()
    assert flags(done.stdout) == flags(shared) and "--verbose" in flags(shared)
    if command == "train":
        assert "num_hid=200" in done.stdout


def flags(help_text: str) -> set[str]:
    return {word.strip("[],") for word in help_text.split() if word.startswith(("--", "[--"))}


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_in_process(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: fingerspell {command}")


def test_train_help_lists_every_config_key_with_its_default_and_meaning():
    text = cli.command_parser("train").format_help()
    for field in dataclasses.fields(Config):
        default = str(field.default).lower() if isinstance(field.default, bool) else str(field.default)
        assert f"  {field.name}={default} " in text, field.name
        assert field.metadata["help"].split()[0] in text.split(f"{field.name}={default}", 1)[1][:80], field.name


def test_print_config_merges_file_then_overrides(tmp_path, capsys):
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps({"num_hid": 256, "num_heads": 8, "aug_affine_p": 0.0}))
    assert cli.main(["train", "--config", str(config_file), "num_heads=4", "--epochs", "7", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {**Config().to_dict(), "num_hid": 256, "num_heads": 4, "aug_affine_p": 0.0, "epochs": 7}
    assert cli.main(["train", "--print-config", "num_hidden=3"]) == 2
    assert "unknown config key 'num_hidden'" in capsys.readouterr().err


def test_print_config_of_a_resumed_run(tmp_path, capsys):
    Config(num_hid=64).save(tmp_path / "config.json")
    assert cli.main(["train", "--out", str(tmp_path), "--resume", "--print-config", "epochs=99"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["num_hid"] == 64 and printed["epochs"] == 99


@pytest.mark.slow
def test_resume_finds_the_data_directory_in_run_json(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert cli.main(["train", "--out", str(run), "--resume", "eval_batch_size=32"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 12  # already trained: nothing to do, but the run and its data were found
    info = json.loads((run / "run.json").read_text())
    assert len(info["history"]) == 1 and info["data_dir"] == info["history"][0]["data_dir"]
    assert Config.load(run / "config.json").eval_batch_size == 32


def test_train_without_data_dir_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--out", "somewhere"])
    assert exit_info.value.code == 2
    assert "--data-dir and --out are required" in capsys.readouterr().err


def test_old_flag_names_still_parse():
    assert parse("train", "--data", "d", "--out", "r").data_dir == Path("d")
    assert parse("preprocess", "--data", "d", "--out", "o").data_dir == Path("d")
    assert parse("evaluate", "sub", "--data", "d").data_dir == Path("d")
    assert parse("transcribe", "clip.mp4", "--model", "sub", "--quiet").no_progress is True
    assert parse("extract", "clip.mp4", "--out", "x.parquet", "--quiet").no_progress is True
    for command in ("predict", "evaluate"):
        extra = ["--parquet", "f.parquet"] if command == "predict" else ["--data-dir", "d"]
        assert cli.submission_dir(parse(command, "sub", *extra)) == Path("sub")
        assert cli.submission_dir(parse(command, "--model", "sub", *extra)) == Path("sub")
        with pytest.raises(cli.UsageError, match="two submission folders"):
            cli.submission_dir(parse(command, "a", "--model", "b", *extra))
        with pytest.raises(cli.UsageError, match="SUB_DIR or --model"):
            cli.submission_dir(parse(command, *extra))
    assert parse("export", "--run-dir", "r", "--out", "s").run == Path("r")


def test_a_missing_extra_names_the_pip_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # find_spec reports it missing
    assert cli.main(["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert 'pip install "fingerspell[cpu]"' in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    monkeypatch.setitem(sys.modules, "cv2", None)
    assert cli.main(["render", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "x.gif")]) == 2
    assert 'pip install "fingerspell[video]"' in capsys.readouterr().err


def test_logging_goes_to_stderr_with_level_prefixes(capsys):
    import logging

    cli.configure_logging()
    cli.configure_logging()  # a second call replaces the handler instead of adding one
    log = logging.getLogger("fingerspell.somewhere")
    log.info("progress")
    log.debug("hidden")
    log.warning("careful")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "progress\nwarning: careful\n"


@pytest.mark.slow
def test_train_summary_on_stdout_progress_on_stderr_and_in_train_log(preprocessed_small, tmp_path, capsys):
    import logging

    run_dir = tmp_path / "run"
    tiny = ["num_hid=64", "ff_dim=128", "enc_layers=1", "batch_size=16", "jit_compile=false"]
    assert cli.main(["train", "--data", str(preprocessed_small), "--out", str(run_dir), "--epochs", "1", *tiny]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["epochs"] == 1  # stdout holds the summary alone; Keras' progress bar is on stderr
    assert "training on" in captured.err and "epoch 1: validation score" in captured.err
    log_text = (run_dir / "train.log").read_text()
    assert "training on" in log_text and "epoch 1: validation score" in log_text and "epoch 1: loss" in log_text
    assert not [h for h in logging.getLogger("fingerspell").handlers if isinstance(h, logging.FileHandler)]
