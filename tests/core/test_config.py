"""The example configs, the safe value evaluator, and one-line errors for malformed configs."""
import json
import math
from pathlib import Path

import pytest

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.config import (RUN_NAME_RULE, ConfigError, InitConfig, build_config, config_from_dict,
                                         config_to_text, is_binarized, load_config, parse_raw_text, read_raw,
                                         run_name_problem)
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.runs import run_paths
from efficient_vdvae_core.safe_eval import UnsafeValueError, parse_value

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


# ---------------------------------------------------------------------------------------------------
# The safe evaluator


@pytest.mark.parametrize("raw, expected", [
    ("[1] * 11 + [2]", [1] * 11 + [2]),
    ("32 * 2", 64),
    ("1/2", 0.5),
    ("7 // 2", 3),
    ("-250.", -250.0),
    ("-(3 - 5)", 2),
    ("+1e-4", 1e-4),
    ("8.", 8.0),
    ("(1, 1)", (1, 1)),
    ("('linear', 0.7, 0.9)", ("linear", 0.7, 0.9)),
    ("[0.8, 1., ('linear', 1., 0.8)]", [0.8, 1.0, ("linear", 1.0, 0.8)]),
    ("True", True),
    ("None", None),
    ("'cifar-10'", "cifar-10"),
    ("cifar10_baseline", "cifar10_baseline"),
    ("cifar-10", "cifar-10"),
    ("32  # pixels", 32),
    ("'a # b'  # comment", "a # b"),
    ("[1, 2] # trailing", [1, 2]),
])
def test_parse_value(raw, expected):
    assert parse_value(raw) == expected
    assert type(parse_value(raw)) is type(expected)


@pytest.mark.parametrize("raw", [
    "__import__('os').system('echo hi')",
    "(1).real",
    "(lambda: 1)()",
    "[i for i in range(3)]",
    "open('x')",
    "[1, 2][0]",
    "{'a': 1}",
    "f'{1}'",
])
def test_parse_value_refuses_code(raw):
    with pytest.raises(UnsafeValueError):
        parse_value(raw)


@pytest.mark.parametrize("raw", ["[0] * 10**9", "'a' * 10**9", "2 ** 10 ** 10", "[0] * 1000 * 1000", "1 / 0"])
def test_parse_value_refuses_huge_or_invalid_arithmetic(raw):
    with pytest.raises(ValueError):
        parse_value(raw)


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


def assert_one_line_error(path, *needles, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for needle in needles:
        assert needle in message, message
    return message


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


# ---------------------------------------------------------------------------------------------------
# Lines of the file: each key and header at the start of its line, each value on its line


def edited_text(write_cfg, old, new):
    """Path of egs/tiny.cfg with the line `old` replaced by the text `new`."""
    path = write_cfg()
    text = path.read_text(encoding="utf-8")
    assert f"\n{old}\n" in text
    path.write_text(text.replace(f"\n{old}\n", f"\n{new}\n", 1), encoding="utf-8")
    return path, text[:text.index(f"\n{old}\n")].count("\n") + 2  # the 1-based line number of `old`


@pytest.mark.parametrize("indent, word", [("\t", "a tab"), ("    ", "whitespace")])
def test_an_indented_key_line_is_reported_on_its_line(write_cfg, indent, word):
    path, lineno = edited_text(write_cfg, "seed = 420", f"{indent}seed = 420")
    message = assert_one_line_error(path, f"line {lineno}:", "'seed = 420'", f"starts with {word}",
                                    "beginning of the line")
    assert "missing key" not in message


def test_a_multi_line_value_is_refused_on_its_continuation_line(write_cfg):
    path, lineno = edited_text(write_cfg, "up_filters = [16] * 5", "up_filters = [16, 16,\n    16, 16, 16]")
    assert_one_line_error(path, f"line {lineno + 1}:", "'16, 16, 16]'", "continues the value", "one line")


def test_an_indented_section_header_is_refused(write_cfg):
    path, lineno = edited_text(write_cfg, "[train]", "  [train]")
    assert_one_line_error(path, f"line {lineno}:", "'[train]'", "starts with whitespace")


def test_indented_comments_and_blank_lines_are_fine(write_cfg):
    path, _ = edited_text(write_cfg, "seed = 420", "  # an indented comment\n\t\nseed = 420\n    ; another")
    assert load_config(path)[0] == load_config(EGS / "tiny.cfg")[0]


def test_a_utf8_byte_order_mark_is_accepted_and_not_kept(write_cfg):
    path = write_cfg()
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    config, raw = load_config(path)
    assert config == load_config(EGS / "tiny.cfg")[0]
    assert not raw.text.startswith("\ufeff")


def test_a_section_header_may_carry_a_comment(write_cfg):
    path, _ = edited_text(write_cfg, "[train]", "[train]  # the training loop")
    config, raw = load_config(path, ["train.batch_size=4"])
    assert config.train.batch_size == 4 and "[train]  # the training loop" in raw.text
    assert build_config(parse_raw_text(raw.text, "<saved>")) == config


def test_a_colon_is_not_a_key_value_separator(write_cfg):
    path, lineno = edited_text(write_cfg, "seed = 420", "seed: 420")
    assert_one_line_error(path, f"line {lineno}:", "expected 'key = value'")


def test_unknown_keys_are_reported_on_their_line(write_cfg):
    path, lineno = edited_text(write_cfg, "seed = 420", "seed = 420\nsede = 1")
    assert_one_line_error(path, f"line {lineno + 1}:", "unknown key [run] sede", "did you mean seed?")


# ---------------------------------------------------------------------------------------------------
# Ranges: every value is checked where it is read


@pytest.mark.parametrize("dotted, raw, needle", [
    ("run.seed", "2 ** 31", "<= 2147483647"),
    ("run.seed", "2 ** 64", "<= 2147483647"),
    ("run.seed", "-1", ">= 0"),
    ("optimizer.beta1", "1.0", "< 1"),
    ("optimizer.beta2", "1", "< 1"),
    ("optimizer.beta1", "-0.1", ">= 0"),
    ("train.ema_decay", "-0.5", ">= 0"),
    ("train.total_train_steps", "0", ">= 1"),
    ("init.batch_size", "10 ** 100", "64-bit"),
    ("init.batch_size", "0", ">= 1"),
    ("train.batch_size", "2 ** 63", "64-bit"),
    ("model.up_filters", "[2 ** 100] * 5", "64-bit"),
    ("model.input_kernel_size", "2 ** 70", "kernel size"),
    ("optimizer.learning_rate", "10 ** 400", "too large for a floating-point number"),
    ("model.up_mid_filters_ratio", "[10 ** 400] * 5", "too large"),
    ("loss.vae_beta_growth_rate", "1e999 - 1e999", "finite"),
    ("synthesis.temperature_settings", "[1e999]", "finite"),
    ("synthesis.temperature_settings", "[('linear', 1., 1e999)]", "finite"),
    ("run.checkpoint_write_retries", "17", "<= 16"),
    ("run.checkpoint_write_retries", "10 ** 18", "<= 16"),
])
def test_out_of_range_values_are_refused(write_cfg, dotted, raw, needle):
    section, key = dotted.split(".")
    assert_one_line_error(write_cfg({dotted: raw}), f"[{section}] {key}", needle)
    with pytest.raises(ConfigError) as info:  # the same through --set, which the message names
        load_config(EGS / "tiny.cfg", [f"{dotted}={raw}"])
    assert str(info.value).startswith(f"--set {dotted}=") and needle in str(info.value)


@pytest.mark.parametrize("dotted, raw, value", [
    ("run.seed", "2 ** 31 - 1", 2 ** 31 - 1),
    ("run.seed", "0", 0),
    ("optimizer.beta1", "0.", 0.0),
    ("optimizer.beta2", "0.999999", 0.999999),
    ("train.ema_decay", "1.", 1.0),
    ("train.total_train_steps", "1", 1),
    ("init.batch_size", "2 ** 63 - 1", 2 ** 63 - 1),
    ("run.checkpoint_write_retries", "16", 16),
])
def test_values_at_the_edges_of_their_range_are_accepted(dotted, raw, value):
    section, key = dotted.split(".")
    config, _ = load_config(EGS / "tiny.cfg", [f"{dotted}={raw}"])
    assert getattr(getattr(config, section), key) == value


def test_init_batch_size_is_accepted_and_documented_as_unread():
    doc = InitConfig.__dataclass_fields__["batch_size"].metadata["doc"]
    assert "not read" in doc
    for path in [EGS / f"{stem}.cfg" for stem in ALL_CONFIGS] + [REPO / f"efficient_vdvae_{framework}" / "hparams.cfg"
                                                             for framework in ("torch", "jax")]:
        text = path.read_text(encoding="utf-8")
        start = text.index("\n[init]\n")
        assert "does not read it" in text[start:text.index("\n[train]\n", start)], path


# ---------------------------------------------------------------------------------------------------
# Run names: one rule, for the config and for the run folders


BAD_NAMES = ["a/b", "..", ".hidden", "a\\b", "a b", "a\nb", "tab\there", "quo'te", 'dou"ble', "st*r", "a" * 101,
             "a" * 5000, "caf\u00e9", "", "semi;colon", "$HOME"]
GOOD_NAMES = ["a", "cifar10_baseline", "imagenet32_incfilters", "run-2.1", "_x", "-x", "a" * 100, "A.B_c-9"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_run_names_outside_the_safe_set_are_refused_with_the_rule(name):
    with pytest.raises(ConfigError) as info:
        load_config(EGS / "tiny.cfg", [f"run.name={name!r}"])
    message = str(info.value)
    assert RUN_NAME_RULE in message and "\n" not in message and len(message) < len(RUN_NAME_RULE) + 150
    assert run_name_problem(name) == RUN_NAME_RULE
    with pytest.raises(UserError) as info:
        run_paths(name)
    assert RUN_NAME_RULE in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_run_names_in_the_safe_set_are_accepted(name, tmp_path):
    assert load_config(EGS / "tiny.cfg", [f"run.name={name}"])[0].run.name == name
    assert run_name_problem(name) is None and run_paths(name, tmp_path).logs.name == f"logs-{name}"


def test_an_unquoted_run_name_in_the_file_is_checked_verbatim(write_cfg):
    assert_one_line_error(write_cfg({"run.name": "my run"}), "[run] name = my run", RUN_NAME_RULE)


# ---------------------------------------------------------------------------------------------------
# --set: its problems are named as --set, with the fix


def test_an_unquoted_path_in_set_gets_a_hint_to_quote_it():
    with pytest.raises(ConfigError) as info:
        load_config(EGS / "tiny.cfg", ["data.train_data_path=/x/y"])
    message = str(info.value)
    assert message.startswith("--set data.train_data_path=/x/y: syntax error")
    assert "--set \"data.train_data_path='/x/y'\"" in message and "tiny.cfg" not in message


def test_an_unquoted_path_in_the_file_gets_a_hint_to_quote_it(write_cfg):
    assert_one_line_error(write_cfg({"data.val_data_path": "../data/val"}), "[data] val_data_path",
                          "quoted: val_data_path = '../data/val'")


def test_a_string_key_given_a_number_gets_the_hint_too():
    with pytest.raises(ConfigError) as info:
        load_config(EGS / "tiny.cfg", ["data.train_data_path=5"])
    assert "expected a string" in str(info.value) and "'5'" in str(info.value)


@pytest.mark.parametrize("text", ["train.batch_size=", "train.batch_size=   "])
def test_an_empty_set_value_is_blamed_on_the_set(text):
    with pytest.raises(ConfigError) as info:
        load_config(EGS / "tiny.cfg", [text])
    message = str(info.value)
    assert message.startswith(f"--set {text}: empty value") and "tiny.cfg" not in message


@pytest.mark.parametrize("text", ["run.name=a\nb", "train.batch_size=8\n[run]", "run.name=a\rb", "run.name=a\x00b"])
def test_a_set_value_with_a_line_break_or_control_character_is_refused(text):
    with pytest.raises(ConfigError) as info:
        load_config(EGS / "tiny.cfg", [text])
    assert "control character" in str(info.value) and "\n" not in str(info.value)


def test_long_values_are_shortened_in_messages():
    with pytest.raises(ConfigError) as info:
        load_config(EGS / "tiny.cfg", ["train.batch_size='" + "x" * 10_000 + "'"])
    assert "integer" in str(info.value) and len(str(info.value)) < 200


def test_a_stored_config_that_is_not_a_dict_is_a_config_error():
    for data in (None, [1, 2], {"run": 5}):
        with pytest.raises(ConfigError):
            config_from_dict(data, source="ckpt.pt")


# ---------------------------------------------------------------------------------------------------
# The safe evaluator: sizes


@pytest.mark.parametrize("raw, needle", [
    ("((10 ** 1000) ** 1000) ** 1000", "integer too large"),
    ("10 ** 1000 * 10 ** 1000 * 10 ** 1000 * 10 ** 1000 * 10 ** 1000", "integer too large"),
    ("[[1.0] * 100000] * 100000", "elements"),
    ("[0] * 100000 + [0]", "elements"),
    ("-" * 100_000 + "1", "nested"),
])
def test_parse_value_refuses_values_too_large_to_check(raw, needle):
    with pytest.raises(ValueError, match=needle):
        parse_value(raw)
