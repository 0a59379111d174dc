"""The jobs of the synthesis tests, run one after the other in one process.

A job is a dict: {"do": "train" | "synthesize", "framework", "args"} runs that entry point's `main`
through `run_main` (what `python train.py` runs) and records its result, stdout, stderr and exit code;
{"do": "copytree" | "hash" | "corrupt_newest" | "write_original", ...} handles files between
invocations; {"do": "kernel", "framework", "name", "kwargs"} runs a function of
`synthesis_kernels_<framework>` (the model and the backend's kernels by hand).
PyTorch jobs run in the test process (`run_jobs`); JAX jobs run in a subprocess,
`python -m tests.behaviour.synthesis_worker JOBS.json RESULTS_DIR`, so that every JAX process of a test
session shares one persistent compilation cache (see synthesis_fixtures).
"""
import contextlib
import hashlib
import importlib
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np


def plain(value):
    """JSON-ready copy of a mode's result: paths as str, tuples as lists, dict keys as str."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def invoke(framework, entry, args):
    """run_main of efficient_vdvae_<framework>.<entry>: {'result', 'stdout', 'stderr', 'exit'}."""
    from efficient_vdvae_core.cli import run_main
    module = importlib.import_module(f"efficient_vdvae_{framework}.{entry}")
    out, err, code, result = io.StringIO(), io.StringIO(), 0, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result = run_main(module.main, [str(a) for a in args], parser=module.parser())
        except SystemExit as exc:
            code = exc.code
    return {"result": plain(result), "stdout": out.getvalue(), "stderr": err.getvalue(), "exit": code}


def file_hashes(folder):
    """{relative path: SHA-256} of every file under `folder`."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def quiet(*args, **kwargs):
    """A log function that prints nothing."""


def all_rows(indices):
    """EvalRows whose rows are all real images `indices`."""
    from efficient_vdvae_core.evaluation import EvalRows
    indices = np.asarray(indices, np.int64)
    return EvalRows(index=0, start=int(indices[0]), images=indices, valid=np.ones(len(indices), bool),
                    stop=int(indices[-1]) + 1)


def open_run(config_file, workdir, sets=()):
    """(Config, RunPaths) of an existing run, as synthesize.py resolves them."""
    from efficient_vdvae_core.runs import resolve_run_config
    return resolve_run_config(config_file, list(sets), workdir, mode="inference", log=quiet)


def split_images(config, split, n):
    """The first `n` images of a split as float32 NHWC, and their names."""
    from efficient_vdvae_core.data import make_dataset
    dataset = make_dataset(config.data, split, seed=config.run.seed, n_samples=n)
    return np.stack([dataset.load(i) for i in range(n)]).astype(np.float32), dataset.names


def newest_checkpoint(paths, suffix):
    """Path of the newest numbered checkpoint of a run."""
    pattern = re.compile(rf"^checkpoint_(\d+){re.escape(suffix)}$")
    steps = {int(m.group(1)): p for p in paths.checkpoints.iterdir() if (m := pattern.match(p.name))}
    return steps[max(steps)]


def framework_backend(framework):
    """The Framework module (backend.py) of `framework`."""
    return importlib.import_module(f"efficient_vdvae_{framework}.backend")


def corrupt_newest(framework, workdir, step=1000):
    """checkpoint_<step>: a copy of the run's newest checkpoint with its weights truncated to half their
    bytes (a .pt file; the files under state/ of an Orbax folder, whose meta stays readable); its path."""
    backend = framework_backend(framework)
    paths = open_run_paths(workdir)
    newest = newest_checkpoint(paths, backend.checkpoint_suffix)
    damaged = paths.checkpoints / f"checkpoint_{step}{backend.checkpoint_suffix}"
    if newest.is_dir():
        shutil.copytree(newest, damaged)
        files = [p for p in (damaged / "state").rglob("*") if p.is_file()]
    else:
        shutil.copyfile(newest, damaged)
        files = [damaged]
    for path in files:
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return str(damaged)


def write_original(framework, workdir, path):
    """The weights of the run's newest checkpoint as the original code's single checkpoint file `path`."""
    import torch
    backend = framework_backend(framework)
    weights = backend.read_weights(newest_checkpoint(open_run_paths(workdir), backend.checkpoint_suffix))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tensors = (lambda tree: {k: torch.from_numpy(np.array(v)) for k, v in tree.items()})
    torch.save({"global_step": weights.step - 1, "model_state_dict": tensors(weights.params),
                "ema_model_state_dict": tensors(weights.ema)}, path)
    return {"path": str(path), "step": weights.step}


def open_run_paths(workdir, name="tiny"):
    """RunPaths of the run `name` in `workdir`."""
    from efficient_vdvae_core.runs import run_paths
    return run_paths(name, workdir)


def run_job(job):
    """The result of one job (see the module docstring)."""
    do = job["do"]
    if do in ("train", "synthesize"):
        return invoke(job["framework"], do, job["args"])
    if do == "copytree":
        shutil.copytree(job["src"], job["dst"], ignore=shutil.ignore_patterns(*job.get("ignore", [])))
        return job["dst"]
    if do == "hash":
        return file_hashes(job["folder"])
    if do == "corrupt_newest":
        return corrupt_newest(job["framework"], job["workdir"])
    if do == "write_original":
        return write_original(job["framework"], job["workdir"], job["path"])
    if do == "kernel":
        kernels = importlib.import_module(f"tests.behaviour.synthesis_kernels_{job['framework']}")
        return getattr(kernels, job["name"])(**job.get("kwargs", {}))
    raise ValueError(f"unknown job {do!r}")


def run_jobs(jobs):
    """Run [(name, job)] in order; {name: result} (kernel results may hold NumPy arrays)."""
    return {name: run_job(job) for name, job in jobs}


def save_results(results, folder):
    """Results as JSON, the NumPy arrays of kernel results as one .npz per job."""
    folder = Path(folder)
    saved = {}
    for i, (name, result) in enumerate(results.items()):
        if isinstance(result, dict) and any(isinstance(v, np.ndarray) for v in result.values()):
            arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
            np.savez(folder / f"{i}.npz", **arrays)
            result = {**{k: v for k, v in result.items() if k not in arrays}, "_arrays": f"{i}.npz"}
        saved[name] = plain(result)
    (folder / "results.json").write_text(json.dumps(saved))


def load_results(folder):
    """What `save_results` wrote, arrays back in place."""
    folder = Path(folder)
    results = json.loads((folder / "results.json").read_text())
    for name, result in results.items():
        if isinstance(result, dict) and "_arrays" in result:
            with np.load(folder / result.pop("_arrays")) as arrays:
                result.update({k: arrays[k] for k in arrays.files})
    return results


if __name__ == "__main__":
    from efficient_vdvae_jax.utils import cpu
    cpu.prepare()  # as the JAX entry points do
    jobs_file, results_dir = sys.argv[1:3]
    save_results(run_jobs(json.loads(Path(jobs_file).read_text())), results_dir)
