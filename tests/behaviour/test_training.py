"""Real training runs of the tiny configs in both frameworks: end to end, exact resume, TensorBoard, skip rules."""
import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.behaviour.conftest import (RESUMED, assert_same_state, normalise, refused_training, same_in_both,
                                      train_here, val_nelbo)



def test_two_steps_end_to_end(framework, two_step_run):
    paths = two_step_run
    assert framework.steps(paths.workdir) == [1, 2]
    assert paths.saved_config.is_file() and (paths.logs / "samples" / "step_2.png").is_file()
    meta, arrays = framework.read(framework.path(paths.workdir, 2))
    assert meta["step"] == 2 and meta["skips"] == 0 and meta["consecutive_skips"] == 0
    assert meta["global_step"] == 1 and meta["framework"] == framework.name
    assert meta["config"]["run"]["name"] == "tiny"
    parts = ({k.split("/")[0] for k in arrays} if framework.name == "torch" else {k.split("'")[1] for k in arrays})
    assert parts == ({"params", "ema", "opt"} if framework.name == "torch" else {"params", "ema", "opt_state"})
    if framework.name == "torch":
        from efficient_vdvae_torch.utils.checkpoint import read_checkpoint
        state = read_checkpoint(framework.path(paths.workdir, 2))
        assert set(state) >= {"model_state_dict", "ema_model_state_dict", "optimizer_state_dict", "global_step"}
        assert {float(v) for k, v in arrays.items() if k.endswith("/step")} == {2.0}  # Adamax steps taken
    else:
        assert [int(v) for k, v in arrays.items() if k.endswith(".count")] == [2]
    weights = framework.weights(framework.path(paths.workdir, 2))
    assert weights.step == 2 and weights.params.keys() == weights.ema.keys()
    lines = [json.loads(line) for line in (paths.logs / "metrics.jsonl").read_text().splitlines()]
    assert [line["split"] for line in lines].count("val") == 2
    assert all(np.isfinite(line["Losses/nelbo"]) for line in lines if line["split"] in ("train", "val"))
    batches = [line for line in lines if line["split"] == "train_batch"]  # the last training batch, evaluated
    assert [line["step"] for line in batches] == [1, 2] and all(-1 <= line["Losses/ssim"] <= 1 for line in batches)


def test_binarized_two_steps(framework, tmp_path, capsys):
    paths = train_here(framework, tmp_path, 2, "train.checkpoint_and_eval_interval_in_steps=2",
                       config="tiny_binarized")
    assert framework.steps(tmp_path, "tiny_binarized") == [2]
    meta, _ = framework.read(framework.path(tmp_path, 2, "tiny_binarized"))
    assert meta["step"] == 2 and meta["config"]["data"]["dataset_source"] == "embedded_digits"
    assert list(val_nelbo(paths)) == [2] and np.isfinite(val_nelbo(paths)[2])
    samples = paths.logs / "samples"  # hard samples and Bernoulli means, own size and enlarged (8 digits: x3)
    assert sorted(p.name for p in samples.iterdir()) == ["step_2.png", "step_2_means.png", "step_2_means_x3.png",
                                                        "step_2_x3.png"]
    small, big = (np.asarray(Image.open(samples / name)) for name in ("step_2_means.png", "step_2_means_x3.png"))
    assert big.shape[1] >= 512 and np.array_equal(big[::3, ::3], small) and len(np.unique(small)) > 2
    lines = [json.loads(line) for line in (paths.logs / "metrics.jsonl").read_text().splitlines()]
    score = [line for line in lines if line["split"] == "classifier_score"]
    assert len(score) == 1 and score[0]["step"] == 2
    assert score[0]["Quality/classifier_score_real"] == pytest.approx(0.932)  # 250 real test digits
    for weights in ("ema", "raw", "ema_means"):
        assert 0 <= score[0][f"Quality/classifier_score_{weights}"] <= 1
    assert capsys.readouterr().out.count("Classifier score: ") == 1


def test_resume_is_exact(framework, two_step_run, reference, tmp_path, capsys):
    """Stopped after 2 steps and run again to 4: bitwise the weights, EMA and optimizer state of 4 straight steps."""
    source = two_step_run
    for folder in (source.logs, source.checkpoints):
        shutil.copytree(folder, tmp_path / folder.name)
    capsys.readouterr()
    paths = train_here(framework, tmp_path, 4, "train.checkpoint_and_eval_interval_in_steps=1")
    assert RESUMED.search(capsys.readouterr().out).group(2) == "2"
    assert framework.steps(tmp_path) == [3, 4]
    for step in (3, 4):
        assert_same_state(framework, framework.path(tmp_path, step), reference.states[step])
    nelbo = val_nelbo(paths)
    assert {step: nelbo[step] for step in (3, 4)} == {step: reference.nelbo[step] for step in (3, 4)}


def nan_at(framework, monkeypatch, steps, outputs):
    """Patch the framework's trainer: the batch of each step in `steps` holds a NaN; StepOutputs go to `outputs`."""
    trainer = framework.module("trainer")
    cls = trainer.TorchTrainer if framework.name == "torch" else trainer.JaxTrainer
    step = cls.train_step

    def with_nan(self, images, values, *args, **kwargs):
        if values.step in steps:
            images = images.clone() if hasattr(images, "clone") else np.array(images)
            images[0, 0, 0, 0] = float("nan")
        out = step(self, images, values, *args, **kwargs)
        outputs[values.step] = out
        return out

    monkeypatch.setattr(cls, "train_step", with_nan)


def test_nan_gradients_are_skipped_and_counted(framework, reference, tmp_path, monkeypatch, across):
    """A NaN in a batch: the update is skipped (weights, EMA and optimizer state unchanged) and counted."""
    outputs = {}
    nan_at(framework, monkeypatch, {1}, outputs)
    paths = train_here(framework, tmp_path, 3, "train.checkpoint_and_eval_interval_in_steps=1",
                       "run.max_allowed_checkpoints=3", "train.logging_interval_in_steps=1")
    assert outputs[1].skipped and math.isnan(outputs[1].grad_norm)
    assert not outputs[0].skipped and not outputs[2].skipped
    metas = {step: framework.read(framework.path(tmp_path, step)) for step in (1, 2, 3)}
    assert [(m["skips"], m["consecutive_skips"]) for m, _ in metas.values()] == [(0, 0), (1, 1), (1, 0)]
    assert_same_state(framework, framework.path(tmp_path, 1), reference.states[1])
    (_, after_skip), (_, before) = metas[2], metas[1]
    assert after_skip.keys() == before.keys()
    for name, value in before.items():
        np.testing.assert_array_equal(after_skip[name], value, err_msg=name)
    assert not np.array_equal(metas[3][1][next(iter(before))], before[next(iter(before))])
    lines = [json.loads(line) for line in (paths.logs / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if line["split"] == "train"]
    assert [line["Training/skipped"] for line in train] == [0.0, 1.0, 0.0]
    assert [line["Losses/skips_count"] for line in train] == pytest.approx([0, 1 / 3, 1 / 3])
    same_in_both(across, "skip counters", framework, [(m["skips"], m["consecutive_skips"]) for m, _ in metas.values()])


def test_runaway_updates_are_skipped_then_stop_in_one_line(framework, tmp_path, capsys, across):
    """Learning rate 1e30: the updates turn NaN, are skipped, and max_consecutive_skips stops the run."""
    line = refused_training(capsys, framework, tmp_path, 10, "optimizer.learning_rate=1e30",
                            "train.max_consecutive_skips=3", "train.checkpoint_and_eval_interval_in_steps=2")
    assert line.startswith("error: stopped at step 5: the last 3 updates were all skipped (gradient norm nan")
    newest = framework.path(tmp_path, 4).name
    assert "NaN/inf" in line and f"newest: {newest}, step 4" in line
    assert framework.steps(tmp_path) == [2, 4] and framework.temporaries(tmp_path) == []
    meta, _ = framework.read(framework.path(tmp_path, 4))
    assert meta["step"] == 4 and meta["consecutive_skips"] == 2  # the third skip in a row, at step 5, stopped it
    same_in_both(across, "too many skips", framework, normalise(line, framework, tmp_path))


def test_too_many_nan_batches_stop_with_the_same_line(framework, tmp_path, capsys, monkeypatch, across):
    nan_at(framework, monkeypatch, set(range(100)), {})
    line = refused_training(capsys, framework, tmp_path, 10, "train.max_consecutive_skips=2",
                            "train.checkpoint_and_eval_interval_in_steps=1")
    assert line.startswith("error: stopped at step 2: the last 2 updates were all skipped (gradient norm nan, "
                           "skip threshold 800.0, [train] max_consecutive_skips = 2)")
    assert f"newest: {framework.path(tmp_path, 1).name}, step 1" in line
    assert framework.steps(tmp_path) == [1]
    same_in_both(across, "NaN batches", framework, normalise(line, framework, tmp_path))
