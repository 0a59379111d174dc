"""Every checkpoint-shaped input, recognised by its content and read as Weights by either framework.

| format | what it is | read by |
|---|---|---|
| `pt` | our PyTorch `checkpoint_<step>.pt`, or the original PyTorch code's single file (a torch zip) | torch.load |
| `orbax` | our JAX `checkpoint_<step>/` folder (Orbax: state/, meta/) | orbax |
| `npz` | weights converted by `python -m efficient_vdvae_jax.convert --to jax` | NumPy |
| `msgpack` | the original JAX code's `checkpoint_<N>` file (flax msgpack) | NumPy + msgpack |

`read_weights(path, read_pt, read_orbax)` takes the framework's readers of the two library formats (each
framework reads both: torch.load needs torch, orbax needs JAX); the others are read here. Anything else
is one line naming what was found and how to convert it.
"""
import zipfile
from pathlib import Path

from efficient_vdvae_core.checkpoints import CheckpointError
from efficient_vdvae_core.npz_weights import load_jax_params
from efficient_vdvae_core.original_checkpoints import file_kind, read_original_jax
from efficient_vdvae_core.params import jax_params_to_torch_state_dict
from efficient_vdvae_core.weights import Weights

ACCEPTED = ("a .pt file (ours or the original PyTorch code's), a checkpoint_<step>/ folder of our JAX training, "
            "a .npz from `python -m efficient_vdvae_jax.convert --to jax`, or a checkpoint_<N> file of the original "
            "JAX code")


def sniff(path):
    """(format, description): format in 'pt', 'orbax', 'npz', 'msgpack' or None, described in a few words."""
    path = Path(path)
    if path.is_dir():
        if (path / "state").is_dir() or (path / "_CHECKPOINT_METADATA").is_file():
            return "orbax", "an Orbax checkpoint folder"
        return None, "a folder that is not an Orbax checkpoint (no state/ or _CHECKPOINT_METADATA inside)"
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if names and all(n.endswith(".npy") for n in names):
            return "npz", "a NumPy .npz archive"
        if any(n.endswith("data.pkl") for n in names):
            return "pt", "a PyTorch zip archive"
        return None, "a zip archive that is neither a PyTorch checkpoint nor a NumPy .npz"
    kind = file_kind(path)
    if kind in ("torch", "pickle") or path.suffix == ".pt":
        return "pt", "a PyTorch file"  # the torch reader says what is wrong with a damaged one or a pickle
    if kind == "msgpack":
        return "msgpack", "a msgpack file (the original JAX code's format)"
    return None, "a file in none of the checkpoint formats (truncated, or not a checkpoint)"


def refuse(path, description):
    """The one-line error for a path that is no checkpoint this code reads."""
    return CheckpointError(f"{path}: not a checkpoint this code reads: it is {description}; accepted: {ACCEPTED} "
                           "(PyTorch <-> JAX files convert with python -m efficient_vdvae_jax.convert)")


def read_weights(path, read_pt, read_orbax):
    """Weights (NumPy, PyTorch names and layout) of any accepted checkpoint (see the module table)."""
    path = Path(path)
    kind, description = sniff(path)
    if kind == "pt":
        return read_pt(path)
    if kind == "orbax":
        return read_orbax(path)
    if kind == "npz":
        saved = load_jax_params(path)
        return Weights(params=jax_params_to_torch_state_dict(saved.params),
                       ema=None if saved.ema is None else jax_params_to_torch_state_dict(saved.ema),
                       step=saved.step, config_dict=saved.config, source=path, kind="npz")
    if kind == "msgpack":
        original = read_original_jax(path)
        return Weights(params=original.params, ema=original.ema, step=original.iteration_step, config_dict=None,
                       source=path, kind="original-jax")
    raise refuse(path, description)
