"""What a .cfg may say, and one-line errors when it says otherwise: lines, ranges, run names, --set."""
import pytest

from efficient_vdvae_core.config import (RUN_NAME_RULE, ConfigError, InitConfig, build_config, config_from_dict,
                                         load_config, parse_raw_text, run_name_problem)
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.runs import run_paths
from tests.core.conftest import EGS, REPO, assert_one_line_error


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
    assert_one_line_error(path, f"line {lineno + 1}:", "'16, 16, 16]'", "would continue the value", "on one line")


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
    for path in sorted(EGS.glob("*.cfg")) + [REPO / f"efficient_vdvae_{fw}" / "hparams.cfg" for fw in ("torch", "jax")]:
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
