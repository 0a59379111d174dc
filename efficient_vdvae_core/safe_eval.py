"""Evaluate .cfg values without `eval`: Python literals plus the arithmetic the example configs use."""
import ast
import operator

MAX_SEQUENCE_LENGTH = 100_000  # elements of one value, nested lists counted in full
MAX_INT_BITS = 4096  # far beyond any key's bound; keeps arithmetic on huge integers instant

_BINARY_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_KEYWORD_NAMES = {"True": True, "False": False, "None": None}
# Node types that can appear in a plain value; anything else (calls, attributes, subscripts,
# comprehensions, lambdas...) is code, not a value, and is refused.
_ALLOWED_NODES = (
    ast.Expression, ast.Constant, ast.List, ast.Tuple, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load,
    *_BINARY_OPS, *_UNARY_OPS,
)


class UnsafeValueError(ValueError):
    """Raised when a value contains code (calls, attribute access, ...) rather than a literal."""


def _strip_comment(raw):
    """Remove an inline `# comment` that lies outside quotes."""
    quote = None
    for i, ch in enumerate(raw):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return raw[:i].rstrip()
    return raw.strip()


def _apply(op, left, right):
    if isinstance(op, ast.Mult):
        seq, count = (left, right) if isinstance(left, (list, tuple, str)) else (right, left)
        if isinstance(seq, (list, tuple, str)) and isinstance(count, int) and len(seq) * max(count, 0) > MAX_SEQUENCE_LENGTH:
            raise ValueError(f"sequence longer than {MAX_SEQUENCE_LENGTH} elements")
    if isinstance(op, ast.Pow) and isinstance(right, (int, float)):
        if abs(right) > 1000:
            raise ValueError("exponent too large")
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > MAX_INT_BITS:
            raise ValueError("integer too large")
    result = _BINARY_OPS[type(op)](left, right)
    if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
        raise ValueError("integer too large")
    return result


def _check_size(value):
    """ValueError when `value` holds more than MAX_SEQUENCE_LENGTH elements in all (shared sub-lists counted each time)."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            count += len(item)
            if count > MAX_SEQUENCE_LENGTH:
                raise ValueError(f"more than {MAX_SEQUENCE_LENGTH} elements")
            stack.extend(item)


def _evaluate(node):
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return _KEYWORD_NAMES[node.id]
    if isinstance(node, ast.List):
        return [_evaluate(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_evaluate(e) for e in node.elts)
    if isinstance(node, ast.UnaryOp):
        return _UNARY_OPS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp):
        return _apply(node.op, _evaluate(node.left), _evaluate(node.right))
    raise UnsafeValueError(f"unsupported expression {type(node).__name__}")


def parse_value(raw):
    """Turn one raw .cfg value string into a Python value.

    Literals (numbers, strings, booleans, None, lists, tuples) and + - * / // % ** between them are
    evaluated. A value made only of bare words and operators (`cifar10_baseline`, `cifar-10`) is
    returned as the stripped string, as the original hparams library did. Anything containing code
    (calls, attributes, subscripts, comprehensions...) raises UnsafeValueError; malformed syntax
    raises ValueError. Nothing is ever executed.
    """
    text = _strip_comment(raw)
    if not text:
        raise ValueError("empty value")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"syntax error ({exc.msg})") from None
    except (RecursionError, MemoryError):
        raise ValueError("too deeply nested") from None
    names = []
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise UnsafeValueError(f"code is not allowed in a value ({type(node).__name__})")
        if isinstance(node, ast.Name) and node.id not in _KEYWORD_NAMES:
            names.append(node.id)
    if names:
        return text
    try:
        value = _evaluate(tree)
    except UnsafeValueError:
        raise
    except RecursionError:
        raise ValueError("too deeply nested") from None
    except (TypeError, ZeroDivisionError, OverflowError, ValueError) as exc:
        raise ValueError(f"cannot evaluate ({exc})") from None
    _check_size(value)
    return value
