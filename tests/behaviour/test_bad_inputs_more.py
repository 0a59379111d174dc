"""More bad inputs through the real entry points of both frameworks, by the rules of test_bad_inputs (exit code 2,
one `error:` line, the same in PyTorch and JAX, nothing written): values out of range, text that does not parse
as it looks, and refusals in a run that exists already ('retrain': train.py in the workdir of the saved run
'tiny', whose folders must stay byte-identical, and synthesis of that run).
"""
import re

import pytest

from tests.behaviour import test_bad_inputs
from tests.behaviour.test_bad_inputs import FRAMEWORKS, edited, refusal

inputs = test_bad_inputs.inputs  # the fixture: the folder of inputs with each framework's saved run 'tiny'

S = "--set"
CASES = [
    # --- values out of range -------------------------------------------------------------------------
    ("train-batch-huge", "train", None, [S, "train.batch_size=10**100"], ["train.batch_size=10**100", "64-bit"]),
    ("seed-negative", "train", None, [S, "run.seed=-1"], ["run.seed=-1", ">= 0"]),
    ("seed-2-31", "train", None, [S, "run.seed=2**31"], ["run.seed=2**31", "<= 2147483647"]),
    ("beta1-negative", "train", None, [S, "optimizer.beta1=-0.1"], ["optimizer.beta1=-0.1", ">= 0"]),
    ("beta1-nan", "train", None, [S, "optimizer.beta1=1e999-1e999"], ["optimizer.beta1", "finite"]),
    ("total-steps-huge", "train", None, [S, "train.total_train_steps=10**30"], ["total_train_steps", "64-bit"]),
    ("val-zero", "train", None, [S, "val.n_samples_for_validation=0"], ["n_samples_for_validation", ">= 1"]),
    ("val-batch-zero", "train", None, [S, "val.batch_size=0"], ["val.batch_size=0", ">= 1"]),
    ("target-res-zero", "train", None, [S, "data.target_res=0"], ["target_res", ">= 1"]),
    ("lr-negative", "train", None, [S, "optimizer.learning_rate=-1e-3"], ["learning_rate", ">= 0"]),
    ("ema-nan", "train", None, [S, "train.ema_decay=1e999-1e999"], ["ema_decay", "finite"]),
    ("skip-threshold-nan", "train", None, [S, "optimizer.gradient_skip_threshold=1e999-1e999"],
     ["gradient_skip_threshold", "finite"]),
    ("beta-min-negative", "train", None, [S, "loss.vae_beta_min=-1."], ["vae_beta_min", ">= 0"]),
    ("logging-interval-huge", "train", None, [S, "train.logging_interval_in_steps=10**30"],
     ["logging_interval_in_steps", "64-bit"]),
    ("num-cpus-negative", "train", None, [S, "run.num_cpus=-1"], ["num_cpus", ">= 0"]),
    ("warmup-negative", "train", None, [S, "optimizer.warmup_steps=-1."], ["warmup_steps", ">= 0"]),
    ("bool-for-int", "train", None, [S, "train.batch_size=True"], ["batch_size=True", "integer"]),
    ("run-name-empty", "train", None, [S, "run.name=''"], ["run.name=''", "1 to 100 characters"]),
    ("run-name-unicode", "train", None, [S, "run.name='r\u00e9sum\u00e9'"], ["ASCII letters"]),
    ("run-name-unterminated-quote", "train", edited({"run.name": "'tiny"}), [], ["[run] name = 'tiny", "quotes"]),
    # --- text -----------------------------------------------------------------------------------------
    ("utf8-bom-then-an-error", "train", "\ufeff" + edited(append="batch_size 8\n"), [],
     ["given.cfg: line 405: cannot parse 'batch_size 8'"]),  # the BOM is not what is blamed, nor line 1
    ("nul-byte", "train", edited().replace("\nseed = 420\n", "\nseed = 4\x0020\n"), [], ["[run] seed", "null bytes"]),
    ("set-empty-key", "train", None, [S, "train.=8"], ["--set train.=8", "unknown key"]),
    ("set-blank-value", "train", None, [S, "train.batch_size=   "], ["--set train.batch_size=", "empty value"]),
    ("set-unquoted-windows-path", "train", None, [S, "data.train_data_path=C:\\data"],
     ["text must be quoted", "--set \"data.train_data_path='C:\\\\data'\""]),
    ("set-unquoted-relative-path", "train", None, [S, "data.train_data_path=../data/x"],
     ["text must be quoted", "--set \"data.train_data_path='../data/x'\""]),
    ("indented-section", "train", edited().replace("\n[train]\n", "\n  [train]\n"), [],
     ["given.cfg: line", "'[train]' starts with whitespace"]),
    # --- a run that exists: its folders stay byte-identical, its saved config too ---------------------
    ("retrain-seed-huge", "retrain", None, [S, "run.seed=2**64"], ["run.seed=2**64", "<= 2147483647"]),
    ("retrain-beta1-one", "retrain", None, [S, "optimizer.beta1=1.0"], ["optimizer.beta1=1.0", "< 1"]),
    ("retrain-other-model", "retrain", None, [S, "model.num_output_mixtures=2"],
     ["checkpoint_0", "does not match the model of this config", "top_down.output_conv.weight"]),
    ("retrain-other-architecture", "retrain", None, [S, "model.up_filters=[32]*5"],
     ["[model] up_filters", "widths may only change at stride > 1"]),
    ("retrain-zero-steps", "retrain", None, [S, "train.total_train_steps=0"], ["total_train_steps=0", ">= 1"]),
    ("retrain-batch-huge", "retrain", None, [S, "train.batch_size=10**100"], ["batch_size=10**100", "64-bit"]),
    ("synth-nan-temperature", "synthesize", None,
     [S, "synthesis.synthesis_mode='decoding'", "--sample-temperature", "nan"], ["--sample-temperature", "(got nan)"]),
    ("synth-inf-temperature", "synthesize", None,
     [S, "synthesis.synthesis_mode='decoding'", "--sample-temperature", "inf"], ["--sample-temperature", "(got inf)"]),
    ("synth-negative-max-images", "synthesize", None, ["--max-images", "-3"], ["--max-images", ">= 1"]),
    ("synth-batch-zero", "synthesize", None, [S, "synthesis.batch_size=0"], ["synthesis.batch_size=0", ">= 1"]),
    ("synth-nan-temperature-setting", "synthesize", None, [S, "synthesis.temperature_settings=[1e999-1e999]"],
     ["temperature_settings", "finite"]),
]


@pytest.mark.parametrize("case_id, entry, text, extra, needles", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line_and_nothing_written(case_id, entry, text, extra, needles, inputs, tmp_path, capsys,
                                                 monkeypatch):
    lines = {fw: refusal(fw, entry, text, extra, inputs, tmp_path / fw, capsys, monkeypatch) for fw in FRAMEWORKS}
    for framework, line in lines.items():
        for needle in needles:
            assert needle in line, (framework, needle, line)
    assert re.sub(r"(checkpoint_\d+)\.pt\b", r"\1", lines["torch"]) == lines["jax"]  # PyTorch's file suffix
