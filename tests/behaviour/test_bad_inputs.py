"""Malformed configs, arguments and inputs through the real entry points of both frameworks: refused early, in
one line, the same line in PyTorch and JAX.

Every case runs train.py, synthesize.py or summary.py's `main` of efficient_vdvae_torch and of
efficient_vdvae_jax through `run_main` (what `python train.py` runs) and must end with exit code 2, exactly
one stderr line `error: ...` naming what is wrong and where, no traceback, and nothing written: no
logs-*/checkpoints-* folder in the training workdir (data and --from-checkpoint problems included: they
are checked before the run's config is saved), and the inputs folder (with each framework's saved run
'tiny') byte-for-byte unchanged. The two frameworks' lines agree once the paths of their own folders are
replaced by placeholders.
"""
import importlib
import os

import jax
import pytest
import torch

from efficient_vdvae_core.checkpoints import Checkpoint, CheckpointFolder
from efficient_vdvae_core.cli import run_main
from efficient_vdvae_core.config import render_text
from efficient_vdvae_core.runs import resolve_run_config, run_paths
from efficient_vdvae_core.training.loop import CHECKPOINT_FORMAT_VERSION
from tests.behaviour.synthesis_worker import file_hashes
from tests.conftest import EGS, egs_config

FRAMEWORKS = ("torch", "jax")
FAST = ["--set", "val.n_samples_for_validation=8", "--set", "val.batch_size=8", "--set", "run.num_cpus=0",
        "--set", "train.total_train_steps=1"]
MARKER = "PWNED"  # a file that code in a config value would create in the working directory


def edited(values=None, drop=(), append="", prepend="", base="tiny"):
    """A .cfg text: egs/<base>.cfg with 'section.key' -> raw value replaced, keys dropped, text added."""
    text = (EGS / f"{base}.cfg").read_text(encoding="utf-8")
    if drop:
        text = "\n".join(line for line in text.splitlines()
                         if line.startswith("#") or line.split("=", 1)[0].strip() not in drop) + "\n"
    if values:
        nested = {}
        for dotted, raw in values.items():
            section, key = dotted.split(".", 1)
            nested.setdefault(section, {})[key] = raw
        text = render_text(text, nested)
    return prepend + text + append


def custom_data(**paths):
    """Overrides for dataset_source 'custom' whose three folders are named by the keys of `paths`."""
    return {"data.dataset_source": "'custom'", **{f"data.{k}": f"'{{tmp}}/{v}'" for k, v in paths.items()}}


CUSTOM_OK = dict(train_data_path="imgs", val_data_path="imgs", synthesis_data_path="imgs")

# (id, entry, config text (None: egs/tiny.cfg), extra arguments, substrings of the error line)
CASES = [
    # --- the file: syntax, sections, keys ------------------------------------------------------------
    ("no-equals-sign", "train", edited(append="batch_size 8\n"), [], ["line", "expected 'key = value'"]),
    ("key-before-section", "train", edited(prepend="seed = 1\n"), [], ["before any [section]"]),
    ("duplicate-key", "train", edited(append="batch_size = 4\n"), [], ["key 'batch_size' appears twice"]),
    ("duplicate-section", "train", edited(append="[metrics]\nlatent_active_threshold = 1.\n"), [],
     ["section [metrics] appears twice"]),
    ("unknown-section", "train", edited(append="[trian]\nbatch_size = 8\n"), [], ["unknown section [trian]"]),
    ("misspelled-key", "train", edited({"train.batch_szie": "8"}), [], ["[train] batch_szie", "batch_size"]),
    ("missing-key", "train", edited(drop=("seed",)), [], ["missing key [run] seed"]),
    ("empty-file", "train", "", [], ["missing key"]),
    ("not-utf8", "train", b"\xff\xfe[run]\x00\x80", [], ["not a text config file"]),
    ("missing-file", "train", None, ["--config", "{tmp}/nope.cfg"], ["nope.cfg", "not found"]),
    ("config-is-a-folder", "train", None, ["--config", "{tmp}"], ["cannot read config file"]),
    ("tab-indented-key", "train", edited().replace("\nseed = 420\n", "\n\tseed = 420\n"), [],
     ["line", "'seed = 420' starts with a tab", "beginning of the line"]),
    ("multi-line-value", "train", edited().replace("\nup_filters = [16] * 5\n", "\nup_filters = [16, 16,\n  16, 16, 16]\n"),
     [], ["given.cfg: line", "would continue the value", "on one line"]),
    ("colon-separator", "train", edited().replace("\nseed = 420\n", "\nseed: 420\n"), [], ["line", "'key = value'"]),
    # --- types and ranges ----------------------------------------------------------------------------
    ("string-for-int", "train", edited({"train.batch_size": "'eight'"}), [], ["[train] batch_size", "integer"]),
    ("float-for-int", "train", edited({"train.batch_size": "8.5"}), [], ["[train] batch_size", "integer"]),
    ("string-for-bool", "train", edited({"data.random_horizontal_flip": "'yes'"}), [],
     ["random_horizontal_flip", "True or False"]),
    ("negative-batch", "train", edited({"train.batch_size": "-8"}), [], ["[train] batch_size", ">= 1"]),
    ("zero-filters", "train", edited({"model.input_conv_filters": "0"}), [], ["input_conv_filters", ">= 1"]),
    ("zero-stride", "train", edited({"model.up_strides": "[1, 2, 4, 4, 0]"}), [], ["up_strides", ">= 1"]),
    ("negative-interval", "train", edited({"train.logging_interval_in_steps": "-10"}), [],
     ["logging_interval_in_steps", ">= 1"]),
    ("too-many-bits", "train", edited({"data.num_bits": "9"}), [], ["num_bits", "<= 8"]),
    ("ema-above-one", "train", edited({"train.ema_decay": "1.5"}), [], ["ema_decay", "<= 1"]),
    ("no-checkpoints-kept", "train", edited({"run.max_allowed_checkpoints": "0"}), [],
     ["max_allowed_checkpoints", ">= 1"]),
    ("infinite-lr", "train", edited({"optimizer.learning_rate": "1e999"}), [], ["learning_rate", "finite"]),
    ("unknown-write-policy", "train", edited({"run.checkpoint_write_failure": "'ignore'"}), [],
     ["checkpoint_write_failure", "stop, retry"]),
    ("negative-retries", "train", edited({"run.checkpoint_write_retries": "-1"}), [],
     ["checkpoint_write_retries", ">= 0"]),
    ("seed-beyond-every-seeder", "train", None, ["--set", "run.seed=2**64"], ["--set run.seed=2**64", "<= 2147483647"]),
    ("beta1-one", "train", None, ["--set", "optimizer.beta1=1.0"], ["optimizer.beta1", "< 1"]),
    ("beta2-above-one", "train", edited({"optimizer.beta2": "1.5"}), [], ["[optimizer] beta2", "< 1"]),
    ("zero-training-steps", "train", None, ["--set", "train.total_train_steps=0"], ["total_train_steps", ">= 1"]),
    ("init-batch-huge", "train", edited({"init.batch_size": "10**100"}), [], ["[init] batch_size", "64-bit"]),
    ("huge-filters", "train", edited({"model.up_filters": "[2 ** 100] * 5"}), [], ["up_filters", "64-bit"]),
    ("float-overflow", "train", None, ["--set", "optimizer.learning_rate=10**400"], ["learning_rate", "too large"]),
    ("nan-value", "train", edited({"loss.vae_beta_growth_rate": "1e999 - 1e999"}), [],
     ["vae_beta_growth_rate", "finite"]),
    ("infinite-temperature", "train", None, ["--set", "synthesis.temperature_settings=[1e999]"],
     ["temperature_settings", "finite"]),
    ("endless-retries", "train", edited({"run.checkpoint_write_retries": "10**18"}), [],
     ["checkpoint_write_retries", "<= 16"]),
    ("integer-too-large-to-compute", "train", None, ["--set", "train.batch_size=((10**1000)**1000)**1000"],
     ["batch_size", "integer too large"]),
    # --- architecture -------------------------------------------------------------------------------
    ("unequal-lists", "train", edited({"model.up_filters": "[16] * 4"}), [], ["up_filters"]),
    ("asymmetric-strides", "train", edited({"model.down_strides": "[1, 4, 2, 4, 1]"}), [], ["down_strides"]),
    ("resolution-misfit", "train", edited({"data.target_res": "48"}), [], ["target_res"]),
    ("temperatures-per-level", "train", edited({"synthesis.temperature_settings": "[[1.0, 1.0]]"}), [],
     ["temperature_settings", "len(down_strides)"]),
    ("binarized-rgb", "train", edited({"data.dataset_source": "'embedded_digits'"}), [],
     ["embedded_digits", "channels = 1"]),
    # --- names of things ----------------------------------------------------------------------------
    ("unknown-dataset", "train", edited({"data.dataset_source": "'mnist'"}), [], ["dataset_source", "binarized_mnist"]),
    ("unknown-optimizer", "train", edited({"optimizer.type": "'SGD'"}), [], ["[optimizer] type", "Adamax"]),
    ("unknown-lr-schedule", "train", edited({"optimizer.learning_rate_scheme": "'linear'"}), [],
     ["learning_rate_scheme", "cosine"]),
    ("unknown-beta-schedule", "train", edited({"loss.variation_schedule": "'Cubic'"}), [],
     ["variation_schedule", "Logistic"]),
    ("cosine-warmup-after-decay", "train", edited({"optimizer.warmup_steps": "100."}), [],
     ["warmup_steps", "decay_start"]),
    ("weight-decay-without-weight", "train", edited({"loss.l2_weight": "0."}), [], ["l2_weight"]),
    ("run-name-with-slash", "train", edited({"run.name": "../escape"}), [], ["name", "slash"]),
    ("run-name-with-newline", "train", None, ["--set", "run.name='a\\nb'"], ["--set run.name='a", "ASCII letters"]),
    ("run-name-with-star", "train", edited({"run.name": "run*"}), [], ["[run] name = run*", "ASCII letters"]),
    ("run-name-with-quote", "train", edited({"run.name": "it's"}), [], ["[run] name", "quotes"]),
    ("run-name-with-space", "train", edited({"run.name": "my run"}), [], ["[run] name = my run", "spaces"]),
    ("run-name-hidden", "train", None, ["--set", "run.name=.hidden"], ["run.name=.hidden", "not start with '.'"]),
    ("run-name-too-long", "train", None, ["--set", "run.name=" + "a" * 5000], ["run.name=aaa", "100 characters"]),
    # --- code in values -----------------------------------------------------------------------------
    ("code-call", "train", edited({"run.seed": f"__import__('os').system('touch {MARKER}')"}), [],
     ["[run] seed", "refused"]),
    ("code-attribute", "train", edited({"model.up_filters": "().__class__.__bases__[0].__subclasses__()"}), [],
     ["up_filters", "refused"]),
    ("code-in-set", "train", None, ["--set", f"train.batch_size=open('{MARKER}', 'w')"], ["batch_size", "refused"]),
    ("huge-list", "train", edited({"model.up_filters": "[16] * 10 ** 9"}), [], ["up_filters"]),
    # --- command line -------------------------------------------------------------------------------
    ("set-without-equals", "train", None, ["--set", "train.batch_size"], ["--set train.batch_size", "section.key"]),
    ("set-unknown-section", "train", None, ["--set", "trian.batch_size=8"], ["unknown section [trian]"]),
    ("set-wrong-type", "train", None, ["--set", "train.batch_size=[8]"], ["batch_size", "integer"]),
    ("set-unquoted-path", "train", None, ["--set", "data.train_data_path=/x/y"],
     ["--set data.train_data_path=/x/y", "quoted", "--set \"data.train_data_path='/x/y'\""]),
    ("set-empty-value", "train", None, ["--set", "train.batch_size="], ["--set train.batch_size=: empty value"]),
    ("set-line-break", "train", None, ["--set", "train.batch_size=8\n[run]"], ["--set", "control character"]),
    ("unknown-argument", "train", None, ["--bogus"], ["unrecognized arguments: --bogus"]),
    ("workdir-under-a-file", "train", None, ["--workdir", "{tmp}/garbage.pt/work"], [".lock", "check --workdir"]),
    # --- data, found before the run's config is saved -----------------------------------------------
    ("val-larger-than-split", "train", None, ["--set", "val.n_samples_for_validation=100000"],
     ["n_samples_for_validation", "ask for at most"]),
    ("batch-larger-than-split", "train", None, ["--set", "train.batch_size=100000"], ["batch_size", "fewer than"]),
    ("custom-missing-folder", "train", edited(custom_data(**dict(CUSTOM_OK, train_data_path="missing"))), [],
     ["train_data_path", "not found"]),
    ("custom-empty-folder", "train", edited(custom_data(**dict(CUSTOM_OK, val_data_path="empty"))), [],
     ["val_data_path", "is empty"]),
    ("custom-not-an-image-name", "train", edited(custom_data(**dict(CUSTOM_OK, train_data_path="text"))), [],
     ["notes.txt", "not an image file"]),
    ("custom-not-an-image-content", "train", edited(custom_data(**dict(CUSTOM_OK, train_data_path="fake"))), [],
     ["fake.png", "not a readable image"]),
    # --- checkpoints given on the command line ------------------------------------------------------
    ("from-missing-checkpoint", "train", None, ["--from-checkpoint", "{tmp}/none.pt"], ["none.pt", "not found"]),
    ("from-garbage-checkpoint", "train", None, ["--from-checkpoint", "{tmp}/garbage.pt"],
     ["garbage.pt", "unreadable checkpoint", "not a PyTorch checkpoint"]),
    ("from-checkpoint-of-another-config", "train", None, ["--from-checkpoint", "{tmp}/binarized.pt"],
     ["binarized.pt", "does not match", "shape mismatch"]),
    # --- synthesis of the existing run 'tiny' -------------------------------------------------------
    ("synth-no-such-run", "synthesize", None, ["--set", "run.name=nosuchrun"], ["no run named 'nosuchrun'"]),
    ("synth-bad-run-name", "synthesize", None, ["--set", "run.name=a/b"], ["name", "slash"]),
    ("synth-unknown-mode", "synthesize", None, ["--set", "synthesis.synthesis_mode='interpolate'"],
     ["synthesis_mode", "generation"]),
    ("synth-bad-temperature", "synthesize", None, ["--set", "synthesis.temperature_settings=[('cubic', 1, 2)]"],
     ["temperature_settings", "linear"]),
    ("synth-missing-checkpoint", "synthesize", None, ["--checkpoint", "{tmp}/none.pt"], ["none.pt", "not found"]),
    ("synth-garbage-checkpoint", "synthesize", None, ["--checkpoint", "{tmp}/garbage.pt"],
     ["garbage.pt", "unreadable checkpoint"]),
    ("synth-checkpoint-of-another-config", "synthesize", None, ["--checkpoint", "{tmp}/binarized.pt"],
     ["binarized.pt", "does not match", "shape mismatch"]),
    ("synth-zero-images", "synthesize", None, ["--max-images", "0"], ["--max-images", ">= 1"]),
    ("synth-unknown-split", "synthesize", None, ["--split", "bogus"], ["--split", "invalid choice"]),
    ("synth-bad-temperature-argument", "synthesize", None, ["--sample-temperature", "warm"],
     ["--sample-temperature", "invalid float"]),
    ("synth-missing-data", "synthesize", None,
     ["--set", "data.dataset_source='custom'", "--set", "data.synthesis_data_path='{tmp}/missing'"],
     ["synthesis_data_path", "not found"]),
    # --- summary ------------------------------------------------------------------------------------
    ("summary-asymmetric", "summary", edited({"model.down_strides": "[1, 4, 2, 4, 1]"}), [], ["down_strides"]),
    ("summary-syntax", "summary", edited(append="[model\n"), [], ["line"]),
    ("summary-bad-set", "summary", None, ["--set", "model=1"], ["section.key"]),
]

if not torch.cuda.is_available() and jax.default_backend() == "cpu":
    CASES.append(("cuda-without-gpu", "train", None, ["--set", "run.device='cuda'"], ["device = 'cuda'", "no CUDA"]))
JAX_ONLY = [  # PyTorch options that mean nothing in JAX: refused there in one line
    ("compile", "train", None, ["--set", "train.compile=True"],
     ["[train] compile = True is a PyTorch option", "set it to False for JAX"]),
    ("channels-last", "train", None, ["--set", "train.channels_last=True"],
     ["[train] channels_last = True is a PyTorch option", "set it to False for JAX"]),
]


def test_enough_cases():
    assert len(CASES) >= 30 and len({case[0] for case in CASES}) == len(CASES)


def save_untrained_run(framework, config, workdir):
    """The run 'tiny' in `workdir`: its saved config and one checkpoint (step 0) of `framework`, untrained."""
    backend = importlib.import_module(f"efficient_vdvae_{framework}.backend")
    config, paths = resolve_run_config(EGS / "tiny.cfg", ["run.device='cpu'"], workdir, log=lambda *a, **k: None)
    trainer = backend.trainer(config, backend.init_distributed(config), log=lambda *a, **k: None)
    meta = {"format_version": CHECKPOINT_FORMAT_VERSION, "step": 0, "skips": 0, "consecutive_skips": 0,
            "global_step": -1, "framework": framework, "config": config.to_dict()}
    CheckpointFolder(paths.checkpoints, trainer.codec).save(0, Checkpoint(meta=meta, state=trainer.state()), keep=1,
                                                          log=lambda *a, **k: None)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of inputs: image folders (good, empty, with a text file, with a fake PNG), bad checkpoints,
    and for each framework the run 'tiny' (saved config and one untrained checkpoint) in workdir run_<framework>."""
    from PIL import Image

    from efficient_vdvae_torch.trainer import build_training_model
    tmp = tmp_path_factory.mktemp("inputs")
    for folder in ("imgs", "empty", "text", "fake"):
        (tmp / folder).mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (i * 30, 0, 0)).save(tmp / "imgs" / f"{i}.png")
        Image.new("RGB", (32, 32)).save(tmp / "text" / f"{i}.png")
    (tmp / "text" / "notes.txt").write_text("not an image")
    (tmp / "fake" / "fake.png").write_bytes(b"this is not a PNG file")
    (tmp / "garbage.pt").write_bytes(os.urandom(4096))
    weights = build_training_model(egs_config("tiny_binarized"), torch.device("cpu")).state_dict()
    torch.save({"global_step": 0, "model_state_dict": weights, "ema_model_state_dict": weights},
               tmp / "binarized.pt")  # the original's format: no stored config, so the run's config builds the model
    for framework in FRAMEWORKS:
        save_untrained_run(framework, egs_config("tiny"), tmp / f"run_{framework}")
    return tmp


def refusal(framework, entry, text, extra, inputs, tmp_path, capsys, monkeypatch):
    """Run one entry point of `framework` on a case; the checks that hold in every framework; its error line
    with this framework's folders replaced by <workdir> and <tmp>."""
    tmp_path.mkdir()
    monkeypatch.chdir(tmp_path)  # where code in a value would write MARKER
    extra = [a.replace("{tmp}", str(inputs)) for a in extra]
    config = EGS / "tiny.cfg"
    if text is not None:
        config = tmp_path / "given.cfg"
        if isinstance(text, bytes):
            config.write_bytes(text)
        else:
            config.write_text(text.replace("{tmp}", str(inputs)), encoding="utf-8")
    workdir = inputs / f"run_{framework}" if entry in ("synthesize", "retrain") else tmp_path / "work"
    before = file_hashes(inputs)
    no_workers = ["--set", "run.num_cpus=0"]  # no loader processes forked after JAX started its threads
    args = ["--config", str(config), "--workdir", str(workdir), *(FAST if entry in ("train", "retrain") else no_workers),
            *extra]
    module = importlib.import_module(f"efficient_vdvae_{framework}.{'train' if entry == 'retrain' else entry}")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(module.main, args, parser=module.parser())
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (framework, err)
    assert "Traceback" not in err
    assert not (tmp_path / MARKER).exists()
    if entry == "train" and workdir.exists():
        assert not [p.name for p in workdir.iterdir() if p.name.startswith(("logs-", "checkpoints-"))], framework
    assert file_hashes(inputs) == before, framework
    assert not run_paths("tiny", tmp_path).logs.exists()
    return lines[0].replace(str(workdir), "<workdir>").replace(str(tmp_path), "<tmp>")


@pytest.mark.parametrize("case_id, entry, text, extra, needles", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line_and_nothing_written(case_id, entry, text, extra, needles, inputs, tmp_path,
                                                 capsys, monkeypatch):
    lines = {fw: refusal(fw, entry, text, extra, inputs, tmp_path / fw, capsys, monkeypatch) for fw in FRAMEWORKS}
    for framework, line in lines.items():
        for needle in needles:
            assert needle in line, (framework, needle, line)
    assert lines["torch"] == lines["jax"]


@pytest.mark.parametrize("case_id, entry, text, extra, needles", JAX_ONLY, ids=[c[0] for c in JAX_ONLY])
def test_pytorch_options_refused_in_jax(case_id, entry, text, extra, needles, inputs, tmp_path, capsys,
                                        monkeypatch):
    line = refusal("jax", entry, text, extra, inputs, tmp_path / "jax", capsys, monkeypatch)
    for needle in needles:
        assert needle in line, (needle, line)
