"""Tiny runs of both frameworks for the synthesis tests: trained once per session, every synthesis mode run on
them, the backends' kernels run by hand beside, all results kept for the tests to read.

Both frameworks train the same tiny configs with the same settings (RUN_SETS: 4 steps, batches of 4).
PyTorch jobs run in the test process; the JAX jobs of one run go to one subprocess
(`tests.behaviour.synthesis_worker`), with forced CPU devices and the session's persistent compilation
cache (basetemp/jax_compilation_cache), so that each program compiled once in a session (for training, or
by an earlier synthesis) is loaded, not compiled again, by every later JAX process of the session.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from efficient_vdvae_core.randomness import IW_NLL
from efficient_vdvae_core.runs import run_paths
from tests.behaviour.synthesis_worker import load_results, run_jobs
from tests.conftest import EGS, REPO
from tests.tiny_detector import write_tiny_detector

FRAMEWORKS = ["torch", "jax"]
SEED = 420  # run.seed of both tiny configs
BATCH = 4  # synthesis, training and validation batch: the evaluation program of training serves reconstruction
STEPS = 4
RUN_SETS = [f"train.total_train_steps={STEPS}", f"train.checkpoint_and_eval_interval_in_steps={STEPS}",
            f"train.batch_size={BATCH}", f"val.n_samples_for_validation={BATCH}", f"val.batch_size={BATCH}",
            "run.num_cpus=0", "run.device='cpu'", f"synthesis.batch_size={BATCH}", "synthesis.n_generation_batches=1",
            "synthesis.div_stats_subset_ratio=0.003", "synthesis.save_target_in_reconstruction=True"]
KEEP_ALL = "synthesis.variate_masks_quantile=1.0"
PRUNE = "synthesis.variate_masks_quantile=0.25"
TEMPERATURES = "[1, 0.7, ('linear', 0.5, 1.0), [0.2, 0.4, 0.6, 0.8, 1.0]]"
BINARIZED_TEMPERATURES = "[1., ('linear', 0.5, 1.0)]"
CHECKPOINT_NAME = {"torch": f"checkpoint_{STEPS}.pt", "jax": f"checkpoint_{STEPS}"}
IW_K4 = ["synthesis.iw_samples=4", "synthesis.iw_batch=3"]  # passes of 3 + 1 samples
INTERPOLATION_SETS = ["synthesis.interpolation_pairs=3", "synthesis.interpolation_points=5"]
CONDITIONAL_SETS = ["synthesis.keep_top_layers=[0, 3, 6]", "synthesis.conditional_samples=2",
                    "synthesis.output_temperature=0.01"]  # (nearly) the output head's mode: the latents show
QUALITY_SAMPLES = 6
DETECTOR = "tiny_detector.pt"  # tests.tiny_detector, written into the tmp folder of each RGB run


def jax_env(cache_dir, devices=1):
    """Environment of a JAX subprocess: forced CPU devices, fast compilation, a shared compilation cache."""
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                PYTHONPATH=str(REPO), TQDM_DISABLE="1")


def cli_args(workdir, *sets, config="tiny", extra=()):
    """train.py / synthesize.py arguments: the egs config, the workdir, --set for each of `sets`, then `extra`."""
    args = ["--config", str(EGS / f"{config}.cfg"), "--workdir", str(workdir)]
    for text in sets:
        args += ["--set", text]
    return args + [str(e) for e in extra]


def synth(framework, workdir, mode, *sets, config="tiny", extra=()):
    """A synthesize.py job of mode `mode`."""
    return {"do": "synthesize", "framework": framework,
            "args": cli_args(workdir, f"synthesis.synthesis_mode={mode}", *sets, config=config, extra=extra)}


def kernel(framework, name, **kwargs):
    """A job running synthesis_kernels_<framework>.<name>(**kwargs) (paths passed as str)."""
    return {"do": "kernel", "framework": framework, "name": name,
            "kwargs": {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()}}


def run(framework, jobs, folder, cache_dir):
    """Run [(name, job)] in order, PyTorch in this process, JAX in one subprocess; {name: result}."""
    if framework == "torch":
        results = run_jobs(jobs)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "jobs.json").write_text(json.dumps(jobs))
        out = subprocess.run([sys.executable, "-m", "tests.behaviour.synthesis_worker", str(folder / "jobs.json"),
                              str(folder)], env=jax_env(cache_dir), cwd=REPO, capture_output=True, text=True,
                             timeout=1200, check=False)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-6000:]
        results = load_results(folder)
    for name, result in results.items():
        if isinstance(result, dict) and "exit" in result:
            assert result["exit"] == 0, (name, result["stderr"][-3000:])
    return results


def copy_logs(work, dst):
    """A job copying the saved config of the run 'tiny' (its logs folder, without outputs) to workdir `dst`."""
    return {"do": "copytree", "src": str(run_paths("tiny", work).logs), "dst": str(run_paths("tiny", dst).logs),
            "ignore": ["synthesis-images", "latents"]}


def rgb_jobs(fw, work, tmp):
    """Training the tiny config, then every mode with its settings, the kernels by hand, and copies of the
    run for other batch sizes and a corrupt newest checkpoint."""
    enc_test = run_paths("tiny", work).latents / f"encodings_seed_{SEED}_test"
    original = tmp / "original" / "checkpoints-tiny"  # the original code's single checkpoint file
    six = ["--max-images", 6]
    recon_folder = {"do": "hash", "folder": str(run_paths("tiny", work).synthesis_images / "reconstructed")}
    cfg = str(EGS / "tiny.cfg")
    return [
        ("train", {"do": "train", "framework": fw, "args": cli_args(work, *RUN_SETS)}),
        ("recon", synth(fw, work, "reconstruction", extra=six)),
        ("recon_files", recon_folder),
        ("recon_again", synth(fw, work, "reconstruction", extra=six)),
        ("recon_again_files", recon_folder),
        ("div_stats", synth(fw, work, "div_stats", extra=six)),
        ("recon_all_kept", synth(fw, work, "reconstruction", "synthesis.mask_reconstruction=True", KEEP_ALL,
                                 extra=six)),
        ("recon_pruned", synth(fw, work, "reconstruction", "synthesis.mask_reconstruction=True", PRUNE, extra=six)),
        ("recon_raw", synth(fw, work, "reconstruction", "synthesis.load_ema_weights=False", extra=six)),
        ("recon_out", synth(fw, work, "reconstruction", "synthesis.output_temperature=0.8", extra=six)),
        ("encode_test", synth(fw, work, "encoding", KEEP_ALL, extra=["--split", "test", *six])),
        ("decode_test", synth(fw, work, "decoding", KEEP_ALL, extra=["--encodings", enc_test])),
        ("copy_encodings", {"do": "copytree", "src": str(enc_test), "dst": str(tmp / "copied_encodings")}),
        ("decode_sampled", synth(fw, work, "decoding", extra=["--encodings", tmp / "copied_encodings",
                                                              "--sample-temperature", 0.5, "--max-images", 2])),
        ("encode_pruned", synth(fw, work, "encoding", PRUNE, extra=["--max-images", 5])),
        ("decode_default", synth(fw, work, "decoding", extra=["--max-images", 3])),
        ("generation", synth(fw, work, "generation", f"synthesis.temperature_settings={TEMPERATURES}")),
        ("iw_k1", synth(fw, work, "iw_nll", "synthesis.iw_samples=1", extra=six)),
        ("iw_k4", synth(fw, work, "iw_nll", *IW_K4, extra=six)),
        ("evaluate_iw", kernel(fw, "evaluate", config_file=cfg, workdir=str(work), n=6, batch=6, purpose=IW_NLL)),
        ("interpolation", synth(fw, work, "interpolation", *INTERPOLATION_SETS)),
        ("conditional", synth(fw, work, "conditional", *CONDITIONAL_SETS, extra=["--max-images", 2])),
        ("sample_quality", synth(fw, work, "sample_quality", f"synthesis.quality_samples={QUALITY_SAMPLES}",
                                 f"synthesis.inception_path='{tmp / DETECTOR}'")),
        ("write_original", {"do": "write_original", "framework": fw, "workdir": str(work), "path": str(original)}),
        ("copy_original_run", copy_logs(work, tmp / "original_run")),
        ("recon_original", synth(fw, tmp / "original_run", "reconstruction", extra=[*six, "--checkpoint", original])),
        ("evaluate", kernel(fw, "evaluate", config_file=cfg, workdir=str(work), n=6, batch=6)),
        ("posterior_decode", kernel(fw, "posterior_decode", config_file=cfg, workdir=str(work),
                                    encodings=str(enc_test))),
        ("samples", kernel(fw, "samples", config_file=cfg, workdir=str(work))),
        ("kl", kernel(fw, "kl_per_variate", config_file=cfg, workdir=str(work), n=6, subset_ratio=0.003)),
        ("logstd", kernel(fw, "logstd_posteriors", config_file=cfg, sets=["model.distribution_base='logstd'"])),
        ("copy_batch3", {"do": "copytree", "src": str(work), "dst": str(tmp / "batch3"),
                         "ignore": ["synthesis-images", "latents"]}),
        ("recon_batch3", synth(fw, tmp / "batch3", "reconstruction", "synthesis.batch_size=3", extra=six)),
        ("interpolation_batch3", synth(fw, tmp / "batch3", "interpolation", "synthesis.batch_size=3",
                                       *INTERPOLATION_SETS)),  # pair 1 (images 2, 3) spans two batches
        ("batch3_files", {"do": "hash", "folder": str(run_paths("tiny", tmp / "batch3").synthesis_images)}),
        ("copy_fallback", {"do": "copytree", "src": str(work), "dst": str(tmp / "fallback"),
                           "ignore": ["synthesis-images", "latents"]}),
        ("corrupt", {"do": "corrupt_newest", "framework": fw, "workdir": str(tmp / "fallback")}),
        ("recon_fallback", synth(fw, tmp / "fallback", "reconstruction", extra=six)),
    ]


def cross_jobs(fw, tmp, other_work, other_checkpoint):
    """Decoding the other framework's test encodings (all variates kept) with its weights, in a run folder that
    holds a copy of its saved config: the decoding mode, the decode logits by hand, and the IW-NLL."""
    folder = tmp / "other"
    enc = run_paths("tiny", other_work).latents / f"encodings_seed_{SEED}_test"
    return [
        ("cross_copy", copy_logs(other_work, folder)),
        ("cross_decode", synth(fw, folder, "decoding", extra=["--encodings", enc, "--checkpoint", other_checkpoint])),
        ("cross_logits", kernel(fw, "decode_logits", config_file=str(EGS / "tiny.cfg"), workdir=str(folder),
                                encodings=str(enc), checkpoint=str(other_checkpoint))),
        ("cross_iw", synth(fw, folder, "iw_nll", *IW_K4, extra=["--max-images", 6, "--checkpoint", other_checkpoint])),
    ]


class SynthesisRuns:
    """The runs of a session, made when first asked for: `rgb(fw)`, `binarized(fw)`, `cross()`."""

    def __init__(self, tmp_path_factory):
        self.factory = tmp_path_factory
        self.cache = tmp_path_factory.getbasetemp() / "jax_compilation_cache"
        self.done = {}

    def _once(self, key, make):
        """make() the first time; a failure is reported again, not retried, by every later test that needs it."""
        if key not in self.done:
            try:
                self.done[key] = make()
            except Exception as exc:
                self.done[key] = exc
                raise
        if isinstance(self.done[key], Exception):
            pytest.fail(f"the runs {key} failed in an earlier test: {str(self.done[key])[-2000:]}")
        return self.done[key]

    def rgb(self, fw):
        """(workdir, tmp folder, {job name: result}) of the tiny RGB run of `fw`; JAX also decodes PyTorch's
        encodings (cross_* results)."""
        def make():
            tmp = self.factory.mktemp(f"{fw}_rgb")
            work = tmp / "work"
            jobs = rgb_jobs(fw, work, tmp)
            write_tiny_detector(tmp / DETECTOR)
            if fw == "jax":
                torch_work, _, _ = self.rgb("torch")
                jobs += cross_jobs(fw, tmp, torch_work,
                                   run_paths("tiny", torch_work).checkpoints / CHECKPOINT_NAME["torch"])
            return work, tmp, run(fw, jobs, tmp / "worker", self.cache)
        return self._once(("rgb", fw), make)

    def cross(self):
        """{job name: result} of PyTorch decoding JAX's encodings with JAX's weights (as an original-format file)."""
        def make():
            jax_work, jax_tmp, jax_results = self.rgb("jax")
            tmp = self.factory.mktemp("torch_cross")
            return run("torch", cross_jobs("torch", tmp, jax_work, jax_results["write_original"]["path"]),
                       tmp / "worker", self.cache)
        return self._once("cross", make)

    def binarized(self, fw):
        """(workdir, {job name: result}) of the tiny binarized run of `fw`: reconstruction, generation, IW-NLL."""
        def make():
            tmp = self.factory.mktemp(f"{fw}_binarized")
            work = tmp / "work"
            config = "tiny_binarized"
            jobs = [("train", {"do": "train", "framework": fw, "args": cli_args(work, *RUN_SETS, config=config)}),
                    ("recon", synth(fw, work, "reconstruction", config=config, extra=["--max-images", 5])),
                    ("generation", synth(fw, work, "generation",
                                         f"synthesis.temperature_settings={BINARIZED_TEMPERATURES}", config=config)),
                    ("iw", synth(fw, work, "iw_nll", "synthesis.iw_samples=2", config=config,
                                 extra=["--max-images", 3]))]
            return work, run(fw, jobs, tmp / "worker", self.cache)
        return self._once(("binarized", fw), make)


_SESSION_RUNS = {}  # one SynthesisRuns per session, whichever test module imported the fixture


@pytest.fixture(scope="session")
def synthesis_runs(tmp_path_factory):
    key = tmp_path_factory.getbasetemp()
    if key not in _SESSION_RUNS:
        _SESSION_RUNS[key] = SynthesisRuns(tmp_path_factory)
    return _SESSION_RUNS[key]


@pytest.fixture(params=FRAMEWORKS)
def framework(request):
    return request.param
