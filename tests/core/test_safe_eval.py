"""The safe value evaluator: literals and arithmetic, never code, nothing too large to check."""
import pytest

from efficient_vdvae_core.safe_eval import UnsafeValueError, parse_value


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
