"""Read flax's msgpack checkpoint files (`flax.serialization.msgpack_serialize`) with NumPy and msgpack alone.

The original JAX implementation saved its training state with flax's `save_checkpoint`, which writes
one msgpack map of the state tree. Arrays are msgpack extension objects: type 1 holds an array, type 3
a NumPy scalar, both as the msgpack array `(shape, dtype name, C-order bytes)`; type 2 is a complex
number `(real, imag)`. Arrays over 1 GiB are split into a map `{"__msgpack_chunked_array__": True,
"shape": {"0": ...}, "chunks": {"0": ...}}`. Tuples were written as maps with keys "0", "1", ...,
named tuples as maps of their field names. Reading needs neither JAX nor flax, so a PyTorch-only
install reads the original's JAX checkpoints too.
"""
import msgpack
import numpy as np

_NDARRAY, _COMPLEX, _NPSCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"


class FlaxMsgpackError(ValueError):
    """Bytes that are not a flax msgpack state tree."""


def _array(data):
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    try:
        dtype = np.dtype(dtype_name.decode("ascii"))
    except TypeError:
        raise FlaxMsgpackError(f"array of dtype {dtype_name.decode('ascii', 'replace')!r}, which NumPy cannot "
                               "read (convert the checkpoint to float32 first)") from None
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _ext_hook(code, data):
    if code == _NDARRAY:
        return _array(data)
    if code == _NPSCALAR:
        return _array(data)[()]
    if code == _COMPLEX:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    raise FlaxMsgpackError(f"unknown msgpack extension type {code}")


def _unchunk(tree):
    if not isinstance(tree, dict):
        return tree
    if tree.get(_CHUNKED) is True:
        shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
        chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
        return np.concatenate(chunks).reshape(shape)
    return {k: _unchunk(v) for k, v in tree.items()}


def restore(data):
    """The state tree (nested dicts of NumPy arrays, scalars and lists) of flax msgpack bytes."""
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except FlaxMsgpackError:
        raise
    except Exception as exc:  # msgpack's ExtraData, FormatError, StackError, ValueError...
        raise FlaxMsgpackError(f"not msgpack data ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(tree, dict):
        raise FlaxMsgpackError(f"msgpack data holds a {type(tree).__name__}, not a state tree")
    return _unchunk(tree)
