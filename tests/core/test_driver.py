"""The training driver (efficient_vdvae_core.training.loop) with a fake framework: plain NumPy, no torch, no JAX.

The fake backend's "weights" count the applied updates, its gradient norms come from a per-test
script, and its codec writes one small JSON file per checkpoint, so every rule of the driver is
checked in a fraction of a second: logging and evaluation cadence, skip counting and the stop after
[train] max_consecutive_skips, the checkpoint write-failure policy, resume with fall-back past
unreadable checkpoints, the 'already finished' message and a full disk while writing logs.
"""
import errno
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from efficient_vdvae_core import checkpoints as checkpoints_module
from efficient_vdvae_core import images
from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.checkpoints import Checkpoint, CheckpointError, CheckpointFolder, CheckpointWriteError
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.metrics import effective_pixels
from efficient_vdvae_core.runs import atomic_write_text, run_paths
from efficient_vdvae_core.randomness import EVALUATION
from efficient_vdvae_core.schedules import is_skipped
from efficient_vdvae_core.training.backend import Dist, EvalOutput, StepOutput
from efficient_vdvae_core.training.loop import TooManySkipsError, run_training
from tests.conftest import egs_config

ONE_PROCESS = Dist(process_index=0, n_processes=1, n_shards=1, description="1 fake process")


class FakeCodec:
    """One checkpoint as one JSON file `checkpoint_<step>.json`, written atomically."""
    suffix = ".json"
    collective = False

    def __init__(self, fail_steps=None):
        self.fail_steps = fail_steps or {}  # step -> how many more writes of it fail with ENOSPC
        self.writes = []

    def write(self, path, checkpoint):
        step = checkpoint.meta["step"]
        self.writes.append(step)
        if self.fail_steps.get(step, 0):
            self.fail_steps[step] -= 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        state = {k: np.asarray(v).tolist() for k, v in checkpoint.state.items()}
        atomic_write_text(path, json.dumps({"meta": checkpoint.meta, "state": state}))

    def read(self, path):
        try:
            data = json.loads(open(path, encoding="utf-8").read())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from None
        return Checkpoint(meta=data["meta"], state={k: np.asarray(v) for k, v in data["state"].items()})

    def is_temporary(self, name):
        return name.startswith(".") and name.endswith(".tmp")

    def extra_candidates(self, directory):
        return []

    def owns(self, path):
        return Path(path).suffix == self.suffix


class FakeBackend:
    """A TrainBackend whose weights `w` count the applied updates; gradient norms come from `grad_norm(step)`."""

    def __init__(self, config, grad_norm, codec):
        self.config, self.grad_norm, self.codec = config, grad_norm, codec
        self.n_layers = build_architecture(config.model, config.data).n_latent_layers
        self.w = np.zeros(2)
        self.loaded, self.start_steps, self.evaluated, self.closed = None, [], [], False

    def state(self):
        return {"w": self.w.copy()}

    def load_state(self, checkpoint, resume_from_ema):
        self.loaded = checkpoint
        self.w = np.asarray(checkpoint.state["w"], np.float64).copy()

    def load_weights(self, weights):
        self.w = np.asarray(weights, np.float64).copy()

    def train_batches(self, dataset, start_step):
        self.start_steps.append(start_step)
        step = start_step
        while True:
            yield [step] * self.config.train.batch_size  # a batch of rows, each naming its step
            step += 1

    def train_step(self, batch, values):
        assert batch[0] == values.step
        norm = self.grad_norm(values.step)
        skipped = is_skipped(norm, values.skip_threshold)
        if not skipped:
            self.w += 1.0
        return StepOutput(recon_nats_per_dim=2.0, kl_nats_per_dim=0.5, kl_per_layer_bits=np.ones(self.n_layers),
                          grad_norm=norm, skipped=skipped)

    def eval_batches(self, dataset, plan):
        for rows in plan:
            yield rows.images

    def evaluate(self, batch, rows, counter, details, purpose=EVALUATION):
        if rows.index == 0 and purpose == EVALUATION:
            self.evaluated.append(counter)
        b, res, channels = len(rows.images), self.config.data.target_res, self.config.data.channels
        images = np.zeros((b, res, res, channels), np.float32) if details else None
        histograms = {"OutputLayer/means": np.zeros(4)} if details else None
        return EvalOutput(recon_nats=np.full(b, 3000.0), kl_nats=np.full(b, 30.0),
                          kl_per_layer_bits=np.full((b, self.n_layers), 0.5), ssim=np.full(b, 0.25),
                          inputs=images, samples=images, histograms=histograms)

    def parameters_and_gradients(self):
        return {"w.weight": (self.w.copy(), np.ones_like(self.w))}

    def prior_samples(self, n, counter, ema=True):
        res, channels = self.config.data.target_res, self.config.data.channels
        return np.zeros((n, res, res, channels), np.float32), None

    def all_reduce_sum(self, array):
        return array

    def is_lost_process(self, exc):
        return False

    def barrier(self):
        pass

    def close(self):
        self.closed = True


def fake_framework(grad_norm=lambda step: 1.0, fail_steps=None):
    """A Framework module: name, checkpoint_suffix, read_weights and trainer (the backend kept as .backend)."""
    framework = SimpleNamespace(name="fake", checkpoint_suffix=FakeCodec.suffix, backend=None)
    codec = FakeCodec(fail_steps)

    def trainer(config, dist, log):
        framework.backend = FakeBackend(config, grad_norm, codec)
        return framework.backend

    framework.trainer = trainer
    framework.read_weights = lambda path: np.asarray(json.loads(open(path).read())["w"])
    return framework


def config_with(*overrides):
    return egs_config("tiny", "val.n_samples_for_validation=4", "val.batch_size=4", *overrides)


def train(tmp_path, framework, steps, *overrides, log=None, init_checkpoint=None):
    """run_training of the tiny config for `steps` steps; returns (TrainingRun, logged lines)."""
    config = config_with(f"train.total_train_steps={steps}", *overrides)
    paths = run_paths("tiny", tmp_path)
    paths.logs.mkdir(parents=True, exist_ok=True)
    lines = [] if log is None else log
    run = run_training(config, paths, framework, ONE_PROCESS, log=lines.append, init_checkpoint=init_checkpoint,
                       progress=False)
    return run, lines


def folder(tmp_path):
    return CheckpointFolder(run_paths("tiny", tmp_path).checkpoints, FakeCodec())


def metric_lines(tmp_path):
    text = (run_paths("tiny", tmp_path).logs / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def logged_steps(tmp_path, split):
    return [line["step"] for line in metric_lines(tmp_path) if line["split"] == split]


def one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------ cadence


def test_logging_and_evaluation_cadence_with_the_last_step(tmp_path):
    framework = fake_framework()
    run, lines = train(tmp_path, framework, 7, "train.logging_interval_in_steps=3",
                       "train.checkpoint_and_eval_interval_in_steps=3", "run.max_allowed_checkpoints=2")
    assert run.step == 7 and framework.backend.closed
    assert logged_steps(tmp_path, "train") == [3, 6, 7]  # every interval, and the last step
    assert logged_steps(tmp_path, "val") == [3, 6, 7] and framework.backend.evaluated == [3, 6, 7]
    assert framework.backend.codec.writes == [3, 6, 7] and folder(tmp_path).steps() == [6, 7]  # pruned to 2
    samples = run_paths("tiny", tmp_path).logs / "samples"
    assert sorted(p.name for p in samples.iterdir()) == sorted(  # own size and enlarged (no means: not binarized)
        f"step_{s}{view}.png" for s in (3, 6, 7) for view in ("", "_x4"))
    val = [line for line in metric_lines(tmp_path) if line["split"] == "val"][0]
    per_dim = effective_pixels(run.config.data) * math.log(2)  # the fake: 3000 + 30 nats per image, in bits/dim
    assert val["Losses/nelbo"] == pytest.approx(3030.0 / per_dim, rel=1e-12)
    assert val["Losses/reconstruction_loss"] == pytest.approx(3000.0 / per_dim, rel=1e-12)
    assert any(line.startswith("\nValidation step 3 |") and line.endswith(" (embedded_rgb 32x32)") for line in lines)
    assert lines[-1].startswith("Finished training after 7 steps.")


# ------------------------------------------------------------------------------------------- skips


def test_skips_are_counted_and_the_weights_keep_still(tmp_path):
    norms = {1: float("nan"), 2: 900.0, 4: float("inf")}  # 900 >= gradient_skip_threshold 800
    framework = fake_framework(lambda step: norms.get(step, 1.0))
    train(tmp_path, framework, 6, "train.logging_interval_in_steps=1", "train.checkpoint_and_eval_interval_in_steps=3")
    skipped = [line["Training/skipped"] for line in metric_lines(tmp_path) if line["split"] == "train"]
    assert skipped == [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    counts = [line["Losses/skips_count"] for line in metric_lines(tmp_path) if line["split"] == "train"]
    assert counts == pytest.approx([0, 1 / 6, 2 / 6, 2 / 6, 3 / 6, 3 / 6])
    third = framework.backend.codec.read(folder(tmp_path).path(3))
    assert third.meta["skips"] == 2 and third.meta["consecutive_skips"] == 2 and third.meta["step"] == 3
    last = framework.backend.codec.read(folder(tmp_path).path(6))
    assert last.meta["skips"] == 3 and list(last.state["w"]) == [3.0, 3.0]  # 6 iterations, 3 applied


def test_a_finite_norm_is_not_skipped_when_gradient_skip_is_off(tmp_path):
    framework = fake_framework(lambda step: 1e6 if step else float("nan"))
    run, _ = train(tmp_path, framework, 3, "optimizer.gradient_skip=False",
                   "train.checkpoint_and_eval_interval_in_steps=3")
    assert run.skips == 1 and list(framework.backend.w) == [2.0, 2.0]  # NaN skipped; 1e6 applied


@pytest.mark.parametrize("norm, advice", [(1000.0, "raise gradient_skip_threshold or enable clip_gradient_norm"),
                                          (float("nan"), "the loss or the gradients are NaN/inf")])
def test_too_many_consecutive_skips_stop_in_one_line(tmp_path, norm, advice):
    framework = fake_framework(lambda step: norm if step >= 3 else 1.0)
    with pytest.raises(TooManySkipsError) as info:
        train(tmp_path, framework, 20, "train.max_consecutive_skips=3", "train.checkpoint_and_eval_interval_in_steps=2")
    message = one_line(info)
    shown = "nan" if math.isnan(norm) else "1000"
    assert message.startswith(f"stopped at step 6: the last 3 updates were all skipped (gradient norm {shown}, "
                              "skip threshold 800.0, [train] max_consecutive_skips = 3); ")
    assert "the earlier checkpoints are intact (newest: checkpoint_4.json, step 4)" in message and advice in message
    assert (advice == "the loss or the gradients are NaN/inf") == ("resume from a checkpoint written before" in message)
    assert folder(tmp_path).steps() == [2, 4] and framework.backend.closed
    assert framework.backend.codec.read(folder(tmp_path).path(4)).meta["consecutive_skips"] == 1


def test_max_consecutive_skips_zero_never_stops(tmp_path):
    run, _ = train(tmp_path, fake_framework(lambda step: float("nan")), 5, "train.max_consecutive_skips=0",
                   "train.checkpoint_and_eval_interval_in_steps=5")
    assert run.step == 5 and run.skips == 5 and run.consecutive_skips == 5


# ---------------------------------------------------------------------------------- write failures


def test_a_failed_write_stops_in_one_line_with_the_retry_hint(tmp_path):
    framework = fake_framework(fail_steps={3: 1})
    with pytest.raises(CheckpointWriteError) as info:
        train(tmp_path, framework, 4, "train.checkpoint_and_eval_interval_in_steps=1")
    path = folder(tmp_path).path(3)
    assert one_line(info) == (
        f"could not write checkpoint {path}: No space left on device (ENOSPC); the earlier checkpoints are intact "
        "(newest: checkpoint_2.json, step 2); fix the disk problem and run the same command again to resume "
        "(or set [run] checkpoint_write_failure = 'retry' to retry before stopping)")
    assert folder(tmp_path).steps() == [1, 2] and framework.backend.codec.writes == [1, 2, 3]


def test_a_failed_write_is_retried_with_back_off(tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(checkpoints_module.time, "sleep", waits.append)
    framework = fake_framework(fail_steps={2: 2})
    _, lines = train(tmp_path, framework, 3, "train.checkpoint_and_eval_interval_in_steps=1",
                     "run.checkpoint_write_failure='retry'")
    assert waits == [2.0, 4.0] and framework.backend.codec.writes == [1, 2, 2, 2, 3]
    assert "warning: writing checkpoint 2 failed (No space left on device (ENOSPC)); retry 1 of 3 in 2 s" in lines
    assert "warning: writing checkpoint 2 failed (No space left on device (ENOSPC)); retry 2 of 3 in 4 s" in lines
    assert folder(tmp_path).steps() == [2, 3]


def test_the_message_after_the_last_retry_has_no_retry_hint(tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(checkpoints_module.time, "sleep", waits.append)
    framework = fake_framework(fail_steps={1: 10})
    with pytest.raises(CheckpointWriteError) as info:
        train(tmp_path, framework, 2, "train.checkpoint_and_eval_interval_in_steps=1",
              "run.checkpoint_write_failure='retry'", "run.checkpoint_write_retries=2")
    message = one_line(info)
    assert waits == [2.0, 4.0] and framework.backend.codec.writes == [1, 1, 1]
    assert "No space left on device (ENOSPC) (tried 3 times)" in message
    assert "no checkpoint of this run has been written yet" in message
    assert message.endswith("fix the disk problem and run the same command again to resume")
    assert "retry" not in message.split("(tried 3 times)")[1]
    assert folder(tmp_path).steps() == []


# ------------------------------------------------------------------------------------------- resume


def test_resume_from_the_newest_checkpoint_with_its_counters(tmp_path):
    norms = {2: float("nan"), 3: float("nan")}
    first = fake_framework(lambda step: norms.get(step, 1.0))
    train(tmp_path, first, 4, "train.checkpoint_and_eval_interval_in_steps=2", "run.max_allowed_checkpoints=5")
    second = fake_framework(lambda step: norms.get(step, 1.0))
    run, lines = train(tmp_path, second, 6, "train.checkpoint_and_eval_interval_in_steps=2",
                       "run.max_allowed_checkpoints=5")
    assert f"Resumed from {folder(tmp_path).path(4)} at step 4" in lines
    assert second.backend.loaded.meta["step"] == 4 and second.backend.start_steps == [4]
    assert (run.step, run.skips, run.consecutive_skips) == (6, 2, 0)
    assert list(second.backend.w) == [4.0, 4.0] and folder(tmp_path).steps() == [2, 4, 6]


def test_resume_falls_back_past_unreadable_checkpoints_with_warnings(tmp_path):
    train(tmp_path, fake_framework(), 4, "train.checkpoint_and_eval_interval_in_steps=1",
          "run.max_allowed_checkpoints=4")
    f = folder(tmp_path)
    f.path(4).write_text('{"meta": ')  # truncated
    f.path(3).write_bytes(b"")  # empty
    framework = fake_framework()
    run, lines = train(tmp_path, framework, 5, "train.checkpoint_and_eval_interval_in_steps=1",
                       "run.max_allowed_checkpoints=4")
    assert f"warning: {f.path(4)}: unreadable checkpoint (JSONDecodeError); falling back to checkpoint_3.json" in lines
    assert f"warning: {f.path(3)}: unreadable checkpoint (JSONDecodeError); falling back to checkpoint_2.json" in lines
    assert f"Resumed from {f.path(2)} at step 2" in lines and framework.backend.start_steps == [2]
    assert run.step == 5 and f.steps() == [2, 3, 4, 5]  # the unreadable ones replaced as training passed them
    assert framework.backend.codec.read(f.path(4)).meta["step"] == 4


def test_no_readable_checkpoint_is_refused_not_restarted(tmp_path):
    train(tmp_path, fake_framework(), 2, "train.checkpoint_and_eval_interval_in_steps=1")
    f = folder(tmp_path)
    for step in (1, 2):
        f.path(step).write_text("garbage")
    before = {p.name: p.read_bytes() for p in f.directory.iterdir()}
    framework = fake_framework()
    with pytest.raises(CheckpointError) as info:
        train(tmp_path, framework, 4)
    message = one_line(info)
    assert message.startswith(f"none of the 2 checkpoint file(s) in {f.directory} can be read (newest: {f.path(2)}: "
                              "unreadable checkpoint (JSONDecodeError)); restore them from a backup")
    assert framework.backend.start_steps == [] and framework.backend.closed
    assert {p.name: p.read_bytes() for p in f.directory.iterdir()} == before


def test_weights_of_another_run_start_a_new_run_from_step_0(tmp_path):
    source = tmp_path / "weights.json"
    source.write_text(json.dumps({"w": [5.0, 7.0]}))
    framework = fake_framework()
    run, lines = train(tmp_path / "run", framework, 2, "train.checkpoint_and_eval_interval_in_steps=2",
                       init_checkpoint=str(source))
    assert f"Initialised weights from {source} (fine-tuning from step 0)" in lines
    assert framework.backend.start_steps == [0] and list(framework.backend.w) == [7.0, 9.0] and run.step == 2


def test_an_already_finished_run_says_so_and_writes_no_event_files(tmp_path):
    train(tmp_path, fake_framework(), 3, "train.checkpoint_and_eval_interval_in_steps=3")
    logs = run_paths("tiny", tmp_path).logs
    before = {p: p.read_bytes() for p in logs.rglob("*") if p.is_file()}
    framework = fake_framework()
    run, lines = train(tmp_path, framework, 3)
    assert lines[-1] == ("Run 'tiny' already finished (3 of 3 steps); nothing to do. To train it further, run the "
                         "same command with --set train.total_train_steps=N (N > 3); --set values apply on top of "
                         "the run's saved config")
    assert {p: p.read_bytes() for p in logs.rglob("*") if p.is_file()} == before  # no new event file, no metrics
    assert framework.backend.start_steps == [] and framework.backend.closed and run.step == 3


# ------------------------------------------------------------------------------------------ log disk


def test_a_full_disk_while_writing_logs_stops_in_one_line_naming_the_file(tmp_path, monkeypatch):
    save_png = images.save_png

    def full_disk(path, image):
        if path.name == "step_2.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return save_png(path, image)

    monkeypatch.setattr(images, "save_png", full_disk)
    framework = fake_framework()
    with pytest.raises(UserError) as info:
        train(tmp_path, framework, 3, "train.checkpoint_and_eval_interval_in_steps=1")
    png = run_paths("tiny", tmp_path).logs / "samples" / "step_2.png"
    assert one_line(info) == (f"{png}: No space left on device (ENOSPC), a disk problem; the earlier checkpoints are "
                              "intact (newest: checkpoint_1.json, step 1); fix it and run the same command again to "
                              "resume")
    assert folder(tmp_path).steps() == [1] and framework.backend.closed


def test_other_os_errors_are_not_turned_into_disk_messages(tmp_path, monkeypatch):
    def broken(path, image):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(images, "save_png", broken)
    with pytest.raises(OSError) as info:
        train(tmp_path, fake_framework(), 1)
    assert not isinstance(info.value, UserError) and info.value.errno == errno.EBADF
