"""[train] mixed_precision = 'bf16' on the CPU, both frameworks: a short training tracks the float32 one."""
import json

import numpy as np
import pytest

from efficient_vdvae_core.precision import cpu_bf16_flags
from tests.behaviour.conftest import refused_training, same_in_both, train_here

STEPS = 20
LOGGED = ["train.logging_interval_in_steps=1", "optimizer.warmup_steps=2.", "optimizer.learning_rate=3e-3",
          f"train.checkpoint_and_eval_interval_in_steps={STEPS}"]


def train_losses(paths):
    """[NELBO of every training step], from metrics.jsonl."""
    lines = [json.loads(line) for line in (paths.logs / "metrics.jsonl").read_text().splitlines()]
    return [line["Losses/nelbo"] for line in lines if line["split"] == "train"]


@pytest.mark.skipif(not cpu_bf16_flags(), reason="this CPU has no bf16 instructions (the refusal is tested below)")
def test_bf16_training_tracks_the_float32_loss_curve(framework, tmp_path):
    fp32 = train_losses(train_here(framework, tmp_path / "fp32", STEPS, *LOGGED))
    bf16 = train_losses(train_here(framework, tmp_path / "bf16", STEPS, *LOGGED, "train.mixed_precision='bf16'"))
    assert len(fp32) == len(bf16) == STEPS and np.isfinite(bf16).all()
    assert fp32[-1] < 0.95 * fp32[0]  # the curve moves, so tracking it means something
    relative = np.abs(np.array(bf16) - fp32) / np.array(fp32)
    assert relative.max() < 0.01, relative
    assert relative.max() > 1e-6, "bf16 computed exactly the float32 numbers: it did not run in bf16"


def test_bf16_is_refused_where_the_cpu_has_none(framework, tmp_path, capsys, monkeypatch, across):
    monkeypatch.setattr(framework.backend, "cpu_bf16_flags", lambda: ())
    line = refused_training(capsys, framework, tmp_path, 2, "train.mixed_precision='bf16'")
    assert line.startswith("error: [train] mixed_precision = 'bf16': this machine's CPU has no bf16 support")
    same_in_both(across, "bf16 refusal", framework, line)
    assert not (tmp_path / "logs-tiny").exists()
