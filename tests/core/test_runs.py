"""Run folders, the saved-config precedence, atomic writes, the CLI error path and reset.sh."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from efficient_vdvae_core import runs
from efficient_vdvae_core.cli import build_parser, run_main
from efficient_vdvae_core.config import ConfigError, load_config
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.runs import atomic_write_bytes, atomic_write_text, resolve_run_config, run_paths

REPO = Path(__file__).resolve().parents[2]
RESET_SH = REPO / "efficient_vdvae_torch" / "reset.sh"


def resolve(path, overrides=(), mode="train", workdir=None, verbose=False):
    """resolve_run_config with the run folders next to `path`; returns (config, paths, log lines)."""
    lines = []
    config, paths = resolve_run_config(path, overrides, workdir or path.parent, mode, log=lines.append,
                                       verbose=verbose)
    return config, paths, lines


def test_run_paths_layout(tmp_path):
    paths = run_paths("exp", tmp_path)
    assert paths.workdir == tmp_path
    assert paths.logs == tmp_path / "logs-exp"
    assert paths.checkpoints == tmp_path / "checkpoints-exp"
    assert paths.saved_config == tmp_path / "logs-exp" / "hparams-exp.cfg"
    assert (paths.train_events, paths.val_events) == (paths.logs / "train", paths.logs / "val")
    assert (paths.synthesis_images, paths.latents) == (paths.logs / "synthesis-images", paths.logs / "latents")
    assert run_paths("exp").logs == Path("logs-exp")
    with pytest.raises(UserError):
        run_paths("../escape", tmp_path)
    assert not any(tmp_path.iterdir())


def test_first_run_saves_the_given_file_with_overrides_written_in(write_cfg):
    path = write_cfg()
    config, paths, lines = resolve(path, ["train.batch_size=4", "synthesis.synthesis_mode=generation"])
    assert config.train.batch_size == 4 and config.synthesis.synthesis_mode == "generation"
    saved = paths.saved_config.read_text(encoding="utf-8")
    assert "batch_size = 4" in saved and "synthesis_mode = generation" in saved
    assert "# Global training batch size" in saved  # comments are kept
    assert load_config(paths.saved_config)[0] == config
    assert lines == [f"No existing config found. New run config saved in {paths.saved_config}"]
    assert path.read_text(encoding="utf-8") == write_cfg().read_text(encoding="utf-8")  # given file untouched


def test_second_run_loads_the_saved_copy_and_lists_ignored_keys(write_cfg):
    first, paths, _ = resolve(write_cfg())
    changed = write_cfg({"train.batch_size": "16", "data.random_horizontal_flip": "False"}, filename="changed.cfg")
    config, paths2, lines = resolve(changed, verbose=True)
    assert config == first and paths2 == paths
    assert lines == [
        f"Found existing {paths.saved_config}: resuming run 'tiny' with its saved config.",
        f"Ignored keys of {changed} that differ from the saved config: data.random_horizontal_flip, train.batch_size",
    ]
    _, _, lines = resolve(changed)  # without --verbose: one line with the count
    assert lines[1] == (f"Ignored 2 key(s) of {changed} that differ from the saved config (--verbose lists them; "
                        "--set section.key=value changes a value of this run)")


def test_same_file_again_resumes_quietly(write_cfg):
    path = write_cfg()
    resolve(path)
    _, paths, lines = resolve(path)
    assert lines == [f"Found existing {paths.saved_config}: resuming run 'tiny' with its saved config."]


def test_overrides_apply_on_top_of_the_saved_copy_and_are_not_written_back(write_cfg):
    path = write_cfg()
    _, paths, _ = resolve(path)
    before = paths.saved_config.read_bytes()
    config, _, lines = resolve(path, ["synthesis.synthesis_mode=div_stats", "train.total_train_steps=10"],
                               mode="inference")
    assert config.synthesis.synthesis_mode == "div_stats" and config.train.total_train_steps == 10
    assert paths.saved_config.read_bytes() == before
    assert len(lines) == 2 and "Ignored" not in lines[1]
    assert "synthesis.synthesis_mode=div_stats" in lines[1] and "not written" in lines[1]


def test_set_run_name_selects_another_run(write_cfg):
    path = write_cfg()
    _, paths, _ = resolve(path, ["run.name=second"])
    assert paths.logs.name == "logs-second" and paths.saved_config.name == "hparams-second.cfg"
    assert load_config(paths.saved_config)[0].run.name == "second"
    config, paths2, lines = resolve(path, ["run.name='second'"], mode="inference")
    assert paths2 == paths and "resuming run 'second'" in lines[0]


def test_inference_without_a_saved_copy_raises_and_writes_nothing(write_cfg, tmp_path):
    path = write_cfg()
    with pytest.raises(UserError) as info:
        resolve(path, mode="inference")
    message = str(info.value)
    assert message.startswith("no run named 'tiny' in ") and "hparams-tiny.cfg" in message
    assert "--set run.name=" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["given.cfg"]


def test_inference_with_a_saved_copy_writes_nothing(write_cfg, tmp_path):
    path = write_cfg()
    _, paths, _ = resolve(path)
    listing = sorted(str(p) for p in tmp_path.rglob("*"))
    resolve(path, mode="inference")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == listing


@pytest.mark.parametrize("values, overrides", [
    ({"train.batch_size": "'eight'"}, []),
    ({"model.up_n_layers": "[2] * 4"}, []),
    ({}, ["train.batchsize=8"]),
    ({}, ["train.batch_size=0"]),
    ({}, ["run.name=a/b"]),
])
def test_a_malformed_given_file_or_override_writes_nothing(write_cfg, tmp_path, values, overrides):
    path = write_cfg(values)
    with pytest.raises(ConfigError):
        resolve(path, overrides)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["given.cfg"]


def test_a_malformed_saved_copy_is_named(write_cfg):
    path = write_cfg()
    _, paths, _ = resolve(path)
    paths.saved_config.write_text(paths.saved_config.read_text().replace("batch_size = 8", "batch_size = 8.5"))
    with pytest.raises(ConfigError) as info:
        resolve(path)
    assert str(paths.saved_config) in str(info.value) and "batch_size" in str(info.value)


def test_a_saved_copy_of_another_run_is_refused(write_cfg):
    path = write_cfg()
    _, paths, _ = resolve(path)
    paths.saved_config.write_text(paths.saved_config.read_text().replace("name = tiny", "name = other"))
    with pytest.raises(ConfigError) as info:
        resolve(path)
    assert str(paths.saved_config) in str(info.value) and "other" in str(info.value)


def test_missing_given_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path / "hparams.cfg")
    assert "not found" in str(info.value)


def test_unknown_mode(write_cfg):
    with pytest.raises(ValueError):
        resolve(write_cfg(), mode="eval")


# ---------------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "file.txt"
    atomic_write_text(target, "first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_write_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644
        private = tmp_path / "private.txt"
        private.write_text("old")
        private.chmod(0o600)
        atomic_write_text(private, "new")
        assert private.stat().st_mode & 0o777 == 0o600 and private.read_text() == "new"
    finally:
        os.umask(umask)


@pytest.mark.parametrize("broken", ["replace", "fsync"])
def test_a_failed_atomic_write_leaves_the_old_file(tmp_path, monkeypatch, broken):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(runs.os, broken, fail)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_an_interrupted_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "file.txt"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(runs.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------
# Command line


def test_build_parser_defaults_and_repeated_set():
    parser = build_parser("test")
    args = parser.parse_args([])
    assert (args.config, args.overrides, args.workdir) == ("hparams.cfg", [], ".")
    args = parser.parse_args(["--config", "x.cfg", "--set", "train.batch_size=4", "--set", "run.name=a",
                              "--workdir", "runs"])
    assert (args.config, args.overrides, args.workdir) == ("x.cfg", ["train.batch_size=4", "run.name=a"], "runs")
    assert parser.parse_args([]).overrides == []  # the default list is not shared between parses


def test_run_main_returns_main_result():
    assert run_main(lambda args: args.overrides, ["--set", "a.b=1"]) == ["a.b=1"]


@pytest.mark.parametrize("exc, code, text", [
    (UserError("bad input\nsecond line"), 2, "error: bad input second line\n"),
    (ConfigError("x.cfg: [train] batch_size = 'a': expected an integer"), 2,
     "error: x.cfg: [train] batch_size = 'a': expected an integer\n"),
    (KeyboardInterrupt(), 130, "error: interrupted\n"),
])
def test_run_main_turns_user_errors_into_one_line(capsys, exc, code, text):
    def main(args):
        raise exc
    with pytest.raises(SystemExit) as info:
        run_main(main, [])
    assert info.value.code == code
    captured = capsys.readouterr()
    assert captured.err == text and captured.out == ""


def test_run_main_lets_other_errors_through():
    def main(args):
        raise RuntimeError("a bug")
    with pytest.raises(RuntimeError):
        run_main(main, [])


def test_command_line_error_in_a_real_process(tmp_path):
    script = ("from efficient_vdvae_core.cli import run_main\n"
              "from efficient_vdvae_core.runs import resolve_run_config\n"
              "def main(args):\n"
              "    '''Resolve a run.'''\n"
              "    resolve_run_config(args.config, args.overrides, args.workdir, mode='inference')\n"
              "run_main(main)\n")
    result = subprocess.run([sys.executable, "-c", script, "--config", "missing.cfg"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == "error: missing.cfg: config file not found (pass --config PATH)\n"
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------
# reset.sh


def reset(tmp_path, *args):
    return subprocess.run(["sh", str(RESET_SH), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_reset_removes_both_folders_of_one_run(tmp_path):
    for folder in ("logs-exp/train", "checkpoints-exp", "logs-exp2", "checkpoints-exp2"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "logs-exp" / "hparams-exp.cfg").write_text("x")
    (tmp_path / "checkpoints-exp" / "checkpoint_10").write_text("x")
    result = reset(tmp_path, "exp")
    assert result.returncode == 0, result.stderr
    assert "removed logs-exp" in result.stdout and "removed checkpoints-exp" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints-exp2", "logs-exp2"]
    again = reset(tmp_path, "exp")
    assert again.returncode == 0 and "nothing to remove" in again.stdout


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
@pytest.mark.parametrize("args", [["../exp"], ["a/b"], [""], []])
def test_reset_refuses_bad_names(tmp_path, args):
    (tmp_path / "logs-exp").mkdir()
    result = reset(tmp_path, *args)
    assert result.returncode == 2 and "usage: sh reset.sh <run.name>" in result.stderr
    assert (tmp_path / "logs-exp").is_dir()


def test_reset_script_is_executable():
    assert os.access(RESET_SH, os.X_OK)
