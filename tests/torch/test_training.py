"""Real training runs of the tiny config: train.py, train.sh with 2 processes, exact resume, skips, TensorBoard."""
import os
import subprocess
import sys

import pytest
import torch

from efficient_vdvae_core.cli import run_main
from efficient_vdvae_core.runs import run_paths
from efficient_vdvae_torch import train
from efficient_vdvae_torch.training import Trainer
from efficient_vdvae_torch.utils.checkpoint import list_checkpoints, read_checkpoint
from efficient_vdvae_torch.utils.distributed import DistInfo
from tests.conftest import EGS, REPO, egs_config

FAST = ["--set", "val.n_samples_for_validation=8", "--set", "val.batch_size=8"]


def _train(workdir, steps, interval, *extra, config="tiny"):
    args = ["--config", str(EGS / f"{config}.cfg"), "--workdir", str(workdir),
            "--set", f"train.total_train_steps={steps}",
            "--set", f"train.checkpoint_and_eval_interval_in_steps={interval}", *FAST, *extra]
    run_main(train.main, args, parser=train.parser())
    return run_paths(config, workdir)


def _final_params(paths):
    step, path = list_checkpoints(paths.checkpoints)[-1]
    return step, read_checkpoint(path)["model_state_dict"]


def test_two_steps_end_to_end(tmp_path):
    paths = _train(tmp_path, 2, 1)
    assert [s for s, _ in list_checkpoints(paths.checkpoints)] == [1, 2]
    assert paths.saved_config.is_file() and (paths.logs / "samples" / "step_2.png").is_file()
    state = read_checkpoint(list_checkpoints(paths.checkpoints)[-1][1])
    assert state["step"] == 2 and state["config"]["run"]["name"] == "tiny"
    assert set(state) >= {"model_state_dict", "ema_model_state_dict", "optimizer_state_dict", "global_step"}


def test_binarized_two_steps(tmp_path):
    paths = _train(tmp_path, 2, 2, config="tiny_binarized")
    assert _final_params(paths)[0] == 2


def test_resume_is_exact(tmp_path):
    straight = _train(tmp_path / "a", 4, 2)
    _train(tmp_path / "b", 2, 2)  # stop after step 2 ...
    resumed = _train(tmp_path / "b", 4, 2)  # ... and re-run the same command with more steps
    (sa, pa), (sb, pb) = _final_params(straight), _final_params(resumed)
    assert sa == sb == 4
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


def test_tensorboard_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    paths = _train(tmp_path, 2, 2)
    train_ev = EventAccumulator(str(paths.train_events)).Reload().Tags()
    val_ev = EventAccumulator(str(paths.val_events)).Reload().Tags()
    for tag in ["Losses/reconstruction_loss", "Losses/kl_div", "Losses/nelbo", "Losses/average_kl_div",
                "Losses/variational_beta", "Losses/skips_count", "Schedules/learning_rate",
                "Mean_Max_Updates/Global_norm"]:
        assert tag in train_ev["scalars"], tag
    n_layers = 6
    for tag in ["Losses/reconstruction_loss", "Losses/kl_div", "Losses/nelbo", "Losses/ssim",
                *[f"Losses/latent_kl_{i}" for i in range(n_layers)]]:
        assert tag in val_ev["scalars"], tag
    assert {"Distributions/target", "Distributions/output", "OutputLayer/means",
            "OutputLayer/log_scales"} <= set(val_ev["histograms"])
    assert {"Images/Original", "Images/Generated", "Images/Prior_samples"} <= set(val_ev["images"])
    assert (paths.logs / "metrics.jsonl").read_text().count('"split": "val"') == 1


def test_nan_gradients_are_skipped_and_counted(tmp_path):
    config = egs_config("tiny")
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    trainer = Trainer(config, run_paths("tiny", tmp_path), dist, log=lambda *a: None)
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    trainer.train_step(images)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    ema_before = [e.clone() for e in trainer.ema.params]
    images[0, 0, 0, 0] = float("nan")
    metrics, _ = trainer.train_step(images)
    assert metrics["skipped"] == 1.0 and trainer.skips == 1 and trainer.step == 2
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    assert all(torch.equal(a, e) for a, e in zip(ema_before, trainer.ema.params))


def test_too_many_consecutive_skips_stop_with_a_message(tmp_path):
    config = egs_config("tiny", "train.max_consecutive_skips=2")
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    trainer = Trainer(config, run_paths("tiny", tmp_path), dist, log=lambda *a: None)
    images = torch.full((8, 3, 32, 32), float("nan"))
    trainer.train_step(images)
    with pytest.raises(Exception, match="updates were all skipped"):
        trainer.train_step(images)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")
def test_two_processes_match_one_process(tmp_path):
    common = ["--config", str(EGS / "tiny.cfg"), "--set", "train.total_train_steps=3",
              "--set", "train.checkpoint_and_eval_interval_in_steps=3", *FAST]
    single = _train(tmp_path / "one", 3, 3)
    env = dict(os.environ, NUM_GPUS_PER_NODE="2", PYTHON=sys.executable, OMP_NUM_THREADS="1")
    out = subprocess.run(["sh", str(REPO / "efficient_vdvae_torch" / "train.sh"), *common,
                          "--workdir", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (s1, p1), (s2, p2) = _final_params(single), _final_params(run_paths("tiny", tmp_path / "two"))
    assert s1 == s2 == 3
    for k in p1:
        torch.testing.assert_close(p1[k], p2[k], rtol=1e-5, atol=1e-5, msg=k)
