"""The shell scripts run under POSIX sh (dash, /bin/sh on Debian and Ubuntu) and bash, as the original README
invokes them, with fake `python` and `docker` commands on PATH: no GPU, network or docker engine needed."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO

SCRIPTS = ["efficient_vdvae_torch/train.sh", "efficient_vdvae_torch/reset.sh", "efficient_vdvae_jax/reset.sh",
           "docker_run.sh", "data_scripts/download_and_preprocess.sh", "bench/gpu_check.sh"]
LAUNCH, TRAIN = str(REPO / "efficient_vdvae_torch" / "launch.py"), str(REPO / "efficient_vdvae_torch" / "train.py")
SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]
pytestmark = pytest.mark.skipif(not SHELLS, reason="neither dash nor bash installed")

FAKE = """#!/bin/sh
# Log every call (one argument per line, then a line '--') and answer like the real command.
for arg in "$@"; do printf '%s\\n' "$arg" >> "$FAKE_LOG"; done
echo -- >> "$FAKE_LOG"
case "$1 $2" in
  "-c import torch"*) echo 3 ;;
  "image inspect") exit 1 ;;
esac
"""


def run(shell, script, *args, cwd=None, env=None):
    return subprocess.run([shell, str(REPO / script), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=60)


def fake_commands(tmp_path, *names):
    """A PATH with fake `names` first; returns (env, log file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in names:
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log)}, log


def calls(log):
    """The logged calls, each a list of its arguments."""
    return [c.strip("\n").split("\n") for c in log.read_text().split("--\n") if c]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("script", SCRIPTS)
def test_syntax(shell, script):
    check = subprocess.run([shell, "-n", str(REPO / script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert (REPO / script).read_text().startswith("#!/bin/sh\n")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("script", ["efficient_vdvae_torch/reset.sh", "efficient_vdvae_jax/reset.sh"])
def test_reset_removes_one_run(shell, script, tmp_path):
    for name in ("logs-a", "checkpoints-a", "logs-b"):
        (tmp_path / name).mkdir()
    (tmp_path / "logs-a" / "hparams-a.cfg").write_text("x")
    out = run(shell, script, "a", cwd=tmp_path)
    assert out.returncode == 0 and "removed logs-a" in out.stdout and "removed checkpoints-a" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs-b"]
    assert "nothing to remove" in run(shell, script, "a", cwd=tmp_path).stdout
    for bad in ([], ["x/y"], ["a", "b"]):
        out = run(shell, script, *bad, cwd=tmp_path)
        assert out.returncode == 2 and "usage: sh reset.sh <run.name>" in out.stderr
    assert (tmp_path / "logs-b").is_dir()


@pytest.mark.parametrize("shell", SHELLS)
def test_download_script_usage_and_missing_files(shell, tmp_path):
    env = {"DUMPS_DIR": str(tmp_path / "dumps"), "DATASETS_DIR": str(tmp_path / "datasets")}
    out = run(shell, "data_scripts/download_and_preprocess.sh", "mnist", cwd=REPO / "data_scripts", env=env)
    assert out.returncode == 2 and out.stderr.startswith("usage: ") and "{imagenet32|" in out.stderr
    assert not (tmp_path / "dumps").exists()  # nothing written before the name is checked
    out = run(shell, "data_scripts/download_and_preprocess.sh", "celeba", env=env)
    assert out.returncode == 1 and out.stderr.startswith("error: place img_align_celeba.zip")


@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip not installed")
@pytest.mark.parametrize("shell", SHELLS)
def test_download_script_prepares_imagenet32_from_archives_in_place(shell, tmp_path):
    dumps, datasets = tmp_path / "dumps", tmp_path / "datasets"
    dumps.mkdir()
    for split in ("train", "val"):
        with zipfile.ZipFile(dumps / f"Imagenet32_{split}_npz.zip", "w") as z:
            z.writestr(f"Imagenet32_{split}_npz/{split}_data_batch_1.npz", b"data")
    out = run(shell, "data_scripts/download_and_preprocess.sh", "imagenet32",
              env={"DUMPS_DIR": str(dumps), "DATASETS_DIR": str(datasets)})
    assert out.returncode == 0, out.stderr
    assert (datasets / "imagenet_32/train_data/train_data_batch_1.npz").read_bytes() == b"data"
    assert (datasets / "imagenet_32/val_data/val_data_batch_1.npz").is_file()
    out = run(shell, "data_scripts/download_and_preprocess.sh", "imagenet32",
              env={"DUMPS_DIR": str(dumps), "DATASETS_DIR": str(datasets)})
    assert out.returncode == 1 and "already exists" in out.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_train_sh_forwards_its_arguments_to_torchrun(shell, tmp_path):
    env, log = fake_commands(tmp_path, "python")
    out = run(shell, "efficient_vdvae_torch/train.sh", "--config", "my run.cfg", "--set", "train.batch_size=8",
              cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    probe, launch = calls(log)
    assert probe[0] == "-c" and "torch.cuda.device_count()" in probe[1]
    assert launch == [str(REPO / "efficient_vdvae_torch" / "launch.py"), "--standalone", "--nnodes=1", "--nproc_per_node=3",
                      str(REPO / "efficient_vdvae_torch" / "train.py"), "--config", "my run.cfg", "--set",
                      "train.batch_size=8"]
    log.unlink()
    env.update(NUM_GPUS_PER_NODE="2", TORCHRUN_ARGS="--nnodes=2 --node_rank=1")
    assert run(shell, "efficient_vdvae_torch/train.sh", cwd=tmp_path, env=env).returncode == 0
    assert calls(log) == [[str(REPO / "efficient_vdvae_torch" / "launch.py"), "--nnodes=2", "--node_rank=1", "--nproc_per_node=2",
                           str(REPO / "efficient_vdvae_torch" / "train.py")]]


@pytest.mark.parametrize("shell", SHELLS)
def test_train_sh_joins_a_multi_node_rendezvous_from_environment_variables(shell, tmp_path):
    env, log = fake_commands(tmp_path, "python")
    env.update(NUM_NODES="4", RDZV_ENDPOINT="node0:29400", NUM_GPUS_PER_NODE="8")
    assert run(shell, "efficient_vdvae_torch/train.sh", "--config", "a.cfg", cwd=tmp_path, env=env).returncode == 0
    assert calls(log) == [[LAUNCH, "--nnodes=4", "--rdzv_backend=c10d", "--rdzv_endpoint=node0:29400",
                           "--rdzv_id=efficient_vdvae", "--nproc_per_node=8", TRAIN, "--config", "a.cfg"]]
    log.unlink()
    del env["RDZV_ENDPOINT"]
    out = run(shell, "efficient_vdvae_torch/train.sh", cwd=tmp_path, env=env)
    assert out.returncode == 2 and out.stderr.startswith("error: NUM_NODES=4 needs RDZV_ENDPOINT=host:port")
    assert not log.exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_the_slurm_script_runs_train_sh_once_per_node_with_the_first_node_as_rendezvous(tmp_path):
    env, log = fake_commands(tmp_path, "python")
    for name, body in (("scontrol", 'echo gpu-017; echo gpu-018'), ("srun", 'for a in "$@"; do printf "%s\\n" "$a" >> "$FAKE_LOG"; done\n'
                                                                          'echo -- >> "$FAKE_LOG"; shift; exec "$@"')):
        (tmp_path / "bin" / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / "bin" / name).chmod(0o755)
    env.update(SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_NODELIST="gpu-[017-018]", SLURM_JOB_NUM_NODES="2",
               SLURM_JOB_ID="4242", NUM_GPUS_PER_NODE="8")
    out = run("bash", "egs/train_multinode.sbatch", "--config", "../egs/imagenet32_baseline.cfg", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    srun, launch = calls(log)
    assert srun == ["--kill-on-bad-exit=1", "sh", "train.sh", "--config", "../egs/imagenet32_baseline.cfg"]
    assert launch == [LAUNCH, "--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=gpu-017:29500", "--rdzv_id=4242",
                      "--nproc_per_node=8", TRAIN, "--config", "../egs/imagenet32_baseline.cfg"]


@pytest.mark.parametrize("shell", SHELLS)
def test_docker_run_builds_from_build_folder_and_forwards_the_command(shell, tmp_path):
    env, log = fake_commands(tmp_path, "docker")
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME="")
    out = run(shell, "docker_run.sh", "sh", "-c", "cd efficient_vdvae_torch && sh train.sh", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    inspect, build, docker_run = calls(log)
    assert inspect == ["image", "inspect", "efficient_vdvae_image"]
    assert build == ["build", "-t", "efficient_vdvae_image", str(REPO / "build")]
    assert docker_run[:2] == ["run", "--rm"] and "-it" not in docker_run  # no terminal here
    assert f"{REPO}:/workspace/Efficient-VDVAE" in docker_run
    assert docker_run[-4:] == ["efficient_vdvae_image", "sh", "-c", "cd efficient_vdvae_torch && sh train.sh"]
    assert (tmp_path / "home" / ".cache" / "efficient_vdvae").is_dir()


@pytest.mark.parametrize("shell", SHELLS[:1])
def test_gpu_check_without_cuda_says_so_and_writes_nothing(shell, tmp_path):
    out = run(shell, "bench/gpu_check.sh", tmp_path / "gpu.json", env={"PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0 and out.stdout == ""
    assert out.stderr == "gpu_check.sh: no CUDA device visible to torch (torch.cuda.is_available() is False); nothing run\n"
    assert not (tmp_path / "gpu.json").exists()
