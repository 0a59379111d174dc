"""The example configs, the safe value evaluator, and one-line errors for malformed configs."""
import json
import math
from pathlib import Path

import pytest

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.config import (ConfigError, build_config, config_from_dict, config_to_text, is_binarized,
                                         load_config, parse_raw_text, read_raw)
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.safe_eval import parse_value
from tests.core.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[2]
EGS = REPO / "egs"
REFERENCE = REPO / "tests" / "data" / "egs_values"  # the raw values of the original's example configs

# The original's 20 example configs; the run name is the file name with C1 -> incfilters.
# source, resolution, channels, bits, GPUs, batch train/val/synthesis, steps, levels, latent layers,
# bottom-up blocks, input conv width, n_val.
EGS_TABLE = {
    "binarized_mnist_baseline": ("binarized_mnist", 32, 1, 8, 1, 32, 128, 256, 200000, 23, 23, 23, 32, 5000),
    "cifar10_baseline": ("cifar-10", 32, 3, 8, 2, 32, 64, 32, 800000, 33, 47, 33, 384, 5000),
    "cifar10_C1": ("cifar-10", 32, 3, 8, 1, 32, 64, 32, 800000, 33, 47, 33, 48, 5000),
    "imagenet32_baseline": ("imagenet", 32, 3, 8, 2, 64, 128, 128, 800000, 48, 73, 48, 512, 10000),
    "imagenet32_compact": ("imagenet", 32, 3, 8, 2, 64, 128, 32, 800000, 48, 73, 48, 32, 10000),
    "imagenet32_C1": ("imagenet", 32, 3, 8, 2, 64, 128, 32, 800000, 48, 73, 48, 64, 10000),
    "imagenet64_baseline": ("imagenet", 64, 3, 8, 4, 32, 64, 16, 800000, 53, 84, 53, 512, 10000),
    "imagenet64_compact": ("imagenet", 64, 3, 8, 4, 32, 64, 16, 800000, 53, 84, 53, 32, 10000),
    "imagenet64_C1": ("imagenet", 64, 3, 8, 4, 32, 64, 16, 800000, 53, 84, 53, 64, 10000),
    "celebA64_baseline": ("celebA", 64, 3, 8, 2, 16, 64, 128, 800000, 41, 62, 41, 512, 19867),
    "celebA64_compact": ("celebA", 64, 3, 8, 2, 16, 64, 16, 800000, 41, 62, 41, 32, 19867),
    "celebAHQ256_5bits_baseline": ("celebAHQ", 256, 3, 5, 8, 16, 64, 16, 500000, 59, 66, 68, 512, 3000),
    "celebAHQ256_8bits_baseline": ("celebAHQ", 256, 3, 8, 8, 8, 32, 16, 800000, 63, 69, 68, 512, 3000),
    "celebAHQ256_8bits_compact": ("celebAHQ", 256, 3, 8, 8, 8, 32, 16, 800000, 63, 69, 68, 32, 3000),
    "celebAHQ1024_baseline": ("celebAHQ", 1024, 3, 8, 8, 8, 8, 1, 900000, 49, 72, 49, 8, 1000),
    "ffhq256_5bits_baseline": ("ffhq", 256, 3, 5, 8, 16, 64, 16, 900000, 59, 66, 68, 512, 7000),
    "ffhq256_5bits_C1": ("ffhq", 256, 3, 5, 8, 16, 64, 16, 900000, 59, 66, 68, 128, 7000),
    "ffhq256_8bits_baseline": ("ffhq", 256, 3, 8, 8, 8, 32, 16, 900000, 63, 69, 68, 512, 7000),
    "ffhq256_8bits_compact": ("ffhq", 256, 3, 8, 8, 8, 32, 16, 900000, 63, 69, 68, 32, 7000),
    "ffhq1024_baseline": ("ffhq", 1024, 3, 8, 8, 8, 8, 1, 900000, 49, 72, 49, 8, 1000),
}
TINY = ("tiny", "tiny_binarized")
DEMO = ("cpu_demo",)
ALL_CONFIGS = (*EGS_TABLE, *TINY, *DEMO)


def read_reference(stem):
    """{(section, key): raw value} of one reference file ('section.key = value' per line)."""
    values = {}
    for line in (REFERENCE / f"{stem}.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            lhs, raw = line.split(" = ", 1)
            section, key = lhs.split(".", 1)
            values[(section, key)] = raw
    return values


def test_egs_folder_holds_exactly_the_examples_and_tiny_configs():
    assert sorted(p.stem for p in EGS.glob("*.cfg")) == sorted(ALL_CONFIGS)


@pytest.mark.parametrize("stem", EGS_TABLE)
def test_egs_config_equals_reference(stem):
    reference = read_reference(stem)
    config, raw = load_config(EGS / f"{stem}.cfg")
    ours = {(s, k): v for s, kv in raw.values.items() for k, v in kv.items()}
    assert ours == reference  # the same keys with the same raw text, expressions included
    for (section, key), text in reference.items():  # and the same evaluated values
        expected = text if key == "name" else parse_value(text)
        if isinstance(expected, list):
            expected = tuple(expected)
        assert getattr(getattr(config, section), key) == expected, (section, key)


@pytest.mark.parametrize("stem", EGS_TABLE)
def test_egs_config_matches_its_summary(stem):
    (source, res, channels, bits, gpus, train_b, val_b, synth_b, steps, levels, latent_layers, up_blocks,
     input_filters, n_val) = EGS_TABLE[stem]
    name = stem.replace("C1", "incfilters")
    config, _ = load_config(EGS / f"{stem}.cfg")
    arch = build_architecture(config.model, config.data)
    assert (config.run.name, config.data.dataset_source, config.data.target_res, config.data.channels) == (
        name, source, res, channels)
    assert (config.data.num_bits, config.run.num_gpus, config.train.total_train_steps) == (bits, gpus, steps)
    assert (config.train.batch_size, config.val.batch_size, config.synthesis.batch_size) == (train_b, val_b, synth_b)
    assert (arch.n_levels, arch.n_latent_layers, sum(1 + len(pre) for pre, _ in arch.up_levels)) == (
        levels, latent_layers, up_blocks)
    assert (config.model.input_conv_filters, config.val.n_samples_for_validation, arch.top_resolution) == (
        input_filters, n_val, 1)
    assert config.synthesis.temperature_settings[:4] == (0.8, 0.85, 0.9, 1.0)


def test_torch_hparams_cfg_is_the_cifar10_baseline():
    ours = read_raw(REPO / "efficient_vdvae_torch" / "hparams.cfg")
    baseline = read_raw(EGS / "cifar10_baseline.cfg")
    assert ours.values == baseline.values


def test_egs_files_are_documented():
    for stem in ALL_CONFIGS:
        lines = (EGS / f"{stem}.cfg").read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# ")
        for i, line in enumerate(lines):
            if "=" in line and not line.startswith(("#", "[")):
                assert lines[i - 1].startswith("#"), f"{stem}.cfg: undocumented key {line!r}"


def test_tiny_configs_cover_the_architecture_features():
    configs = {stem: load_config(EGS / f"{stem}.cfg")[0] for stem in TINY}
    rgb, digits = configs["tiny"], configs["tiny_binarized"]
    assert (rgb.data.dataset_source, rgb.data.channels, rgb.data.target_res) == ("embedded_rgb", 3, 32)
    assert (digits.data.dataset_source, digits.data.channels, digits.data.target_res) == ("embedded_digits", 1, 32)
    assert not is_binarized(rgb.data) and is_binarized(digits.data)
    assert rgb.model.num_output_mixtures == 3
    models = [c.model for c in configs.values()]
    assert any(max(m.up_n_blocks_per_res) > 0 for m in models)
    assert any(max(m.down_n_blocks_per_res) > 0 for m in models)
    assert any(4 in m.up_strides for m in models) and any(2 in m.up_strides for m in models)
    assert any(1 in m.up_n_layers + m.down_n_layers for m in models)
    for stem, c in configs.items():
        assert c.run.name == stem and c.run.num_gpus == 1
        assert set(c.model.up_filters) == set(c.model.down_filters) == {16}
        assert len(c.model.up_strides) <= 6
        assert c.train.total_train_steps <= 200 and c.train.batch_size == 8
        assert c.train.checkpoint_and_eval_interval_in_steps == 50
        assert (c.val.n_samples_for_validation, c.val.batch_size, c.synthesis.batch_size) == (32, 16, 8)
        assert c.optimizer.warmup_steps <= c.optimizer.decay_start <= c.train.total_train_steps
        assert c.loss.gamma_max_steps <= c.train.total_train_steps


def test_run_name_with_or_without_quotes_is_the_same(write_cfg):
    names = set()
    for raw in ("my_run", "'my_run'", '"my_run"', "my_run  # a comment"):
        config, _ = load_config(write_cfg({"run.name": raw}))
        names.add(config.run.name)
    assert names == {"my_run"}
    config, _ = load_config(write_cfg(), overrides=["run.name='other'"])
    assert config.run.name == "other"


def test_inline_comments_and_expressions_in_a_file(write_cfg):
    config, _ = load_config(write_cfg({"train.batch_size": "4 * 2  # global", "val.batch_size": "32 // 2",
                                       "optimizer.type": "Adamax  # bare word"}))
    assert (config.train.batch_size, config.val.batch_size, config.optimizer.type) == (8, 16, "Adamax")


@pytest.mark.parametrize("spelling", ["'Radam'", "'RAdam'", "radam", "'Adam'", "'adamax'"])
def test_optimizer_spellings(write_cfg, spelling):
    config, _ = load_config(write_cfg({"optimizer.type": spelling}))
    assert config.optimizer.type == {"radam": "RAdam", "adam": "Adam", "adamax": "Adamax"}[spelling.strip("'").lower()]


def test_config_error_is_a_user_error_and_a_value_error():
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------------------------------------
# Malformed configs: one line naming the file and the key


@pytest.mark.parametrize("values, needles", [
    ({"train.batch_size": "'eight'"}, ["batch_size", "integer"]),
    ({"train.batch_size": "8."}, ["batch_size", "integer"]),
    ({"train.batch_size": "True"}, ["batch_size", "integer"]),
    ({"model.up_n_layers": "[1, 'x', 2, 2, 2]"}, ["up_n_layers", "integers"]),
    ({"model.up_n_layers": "[2] * 4"}, ["up_n_layers", "4 entries"]),
    ({"model.down_latent_variates": "[8] * 6"}, ["down_latent_variates"]),
    ({"model.down_strides": "[1, 4, 2, 4, 1]"}, ["down_strides", "reverse"]),
    ({"data.target_res": "48"}, ["up_strides", "target_res"]),
    ({"data.dataset_source": "'svhn'"}, ["dataset_source", "expected one of"]),
    ({"optimizer.type": "'SGD'"}, ["[optimizer] type", "Adamax"]),
    ({"optimizer.learning_rate_scheme": "'linear'"}, ["learning_rate_scheme", "cosine"]),
    ({"loss.variation_schedule": "'Cosine'"}, ["variation_schedule", "Linear"]),
    ({"train.batch_size": "(8"}, ["batch_size", "syntax error"]),
    ({"model.up_filters": "[32, 16, 16, 16, 16]"}, ["up_filters", "stride 1", "width"]),
    ({"synthesis.temperature_settings": "[('cubic', 1., 2.)]"}, ["temperature_settings", "cubic"]),
    ({"data.channels": "2"}, ["channels"]),
    ({"train.ema_decay": "1.5"}, ["ema_decay", "<= 1"]),
])
def test_malformed_value(write_cfg, values, needles):
    assert_one_line_error(write_cfg(values), *needles)


def test_unknown_section(write_cfg):
    assert_one_line_error(write_cfg(append="\n[trainer]\nbatch_size = 8\n"), "unknown section", "[trainer]")


def test_unknown_key_suggests_the_closest(write_cfg):
    path = write_cfg(append="batch_sise = 8\n")  # lands in the last section, [synthesis]
    assert_one_line_error(path, "unknown key", "batch_sise", "did you mean batch_size?")


def test_unknown_override_key():
    with pytest.raises(ConfigError) as info:
        load_config(EGS / "tiny.cfg", ["train.batchsize=8"])
    assert "did you mean batch_size?" in str(info.value) and "\n" not in str(info.value)


def test_duplicate_key(write_cfg):
    assert_one_line_error(write_cfg(append="n_generation_batches = 2\n"), "n_generation_batches", "twice")


def test_missing_key(write_cfg):
    assert_one_line_error(write_cfg(drop=("ema_decay",)), "missing key", "[train] ema_decay")


def test_line_without_equals_sign(write_cfg):
    assert_one_line_error(write_cfg(append="just some words\n"), "line", "expected 'key = value'")


def test_missing_file(tmp_path):
    assert_one_line_error(tmp_path / "nope.cfg", "not found")


@pytest.mark.parametrize("key", ["run.seed", "data.train_data_path", "model.up_filters",
                                 "synthesis.temperature_settings"])
@pytest.mark.parametrize("payload", [
    "__import__('os').system('touch {marker}')",
    "open('{marker}', 'w').close()",
    "[__import__('pathlib').Path('{marker}').touch() for _ in [1]]",
    "(lambda: __import__('os').system('touch {marker}'))()",
])
def test_code_is_refused_and_never_run(write_cfg, tmp_path, key, payload):
    marker = tmp_path / "pwned"
    path = write_cfg({key: payload.format(marker=marker)})
    assert_one_line_error(path, key.split(".")[1], "refused")
    assert not marker.exists()


def test_code_in_the_run_name_is_never_run(write_cfg, tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError):  # the slashes of the path make it an invalid name
        load_config(write_cfg({"run.name": f"__import__('os').system('touch {marker}')"}))
    assert not marker.exists()


@pytest.mark.parametrize("raw", ["[0] * 10**9", "2 ** 10 ** 10"])
def test_huge_values_are_refused(write_cfg, raw):
    assert_one_line_error(write_cfg({"model.up_filters": raw}), "up_filters")


# ---------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("stem", ["tiny", "tiny_binarized", "cifar10_baseline", "imagenet64_C1", "ffhq256_5bits_C1"])
def test_text_and_dict_round_trips(stem):
    config, _ = load_config(EGS / f"{stem}.cfg")
    assert build_config(parse_raw_text(config_to_text(config), "<text>")) == config
    assert config_from_dict(config.to_dict()) == config
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_round_trip_keeps_per_level_temperature_lists(write_cfg):
    config, _ = load_config(write_cfg({"synthesis.temperature_settings": "[0.5, [0.1, 0.2, 0.3, 0.4, 0.5]]"}))
    assert config.synthesis.temperature_settings == (0.5, (0.1, 0.2, 0.3, 0.4, 0.5))
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert build_config(parse_raw_text(config_to_text(config), "<text>")) == config


def test_floats_survive_the_round_trip_exactly(write_cfg):
    config, _ = load_config(write_cfg({"model.gradient_smoothing_beta": "0.6931472", "optimizer.epsilon": "1e-8"}))
    again = config_from_dict(config.to_dict())
    assert again.model.gradient_smoothing_beta == 0.6931472 and math.isclose(again.optimizer.epsilon, 1e-8, rel_tol=0)
