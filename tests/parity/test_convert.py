"""Weight conversion: PyTorch <-> JAX round trips, the .npz format and CLI, the original JAX importer."""

import jax
import numpy as np
import pytest
import torch

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.params import (export_original_jax_params, flatten_tree, import_original_jax_params,
                                         jax_params_to_torch_state_dict, mol_channel_permutation,
                                         original_jax_path_to_ours, ours_to_original_jax_path, torch_state_dict_to_jax,
                                         unflatten_tree)
from efficient_vdvae_jax import convert
from efficient_vdvae_jax.model.losses import mol_nll
from efficient_vdvae_jax.summary import abstract_params
from efficient_vdvae_torch.model.autoencoder import build_model as build_torch_model
from tests.conftest import EGS, REFERENCE, egs_config


def torch_state(config, seed=0):
    torch.manual_seed(seed)
    return {k: v.numpy() for k, v in build_torch_model(config).state_dict().items()}


def assert_same_state_dict(got, expected):
    assert list(got) == list(expected)  # same keys, in the torch model's order
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k


def run_cli(*argv):
    from efficient_vdvae_core.cli import run_main
    return run_main(convert.main, [str(a) for a in argv], parser=convert.parser())


@pytest.mark.parametrize("name", ["tiny", "tiny_binarized"])
def test_torch_jax_torch_round_trip_is_exact(name):
    config = egs_config(name)
    state = torch_state(config)
    params = torch_state_dict_to_jax(state)
    arch = build_architecture(config.model, config.data)
    expected = dict(abstract_params(arch, config.model))
    flat = flatten_tree(params)
    assert {p: v.shape for p, v in flat.items()} == expected  # same key set, transposed shapes
    assert ("top_down", "levels_down_upsample", 1, "unpool", "ops", 0, "kernel") in flat
    assert_same_state_dict(jax_params_to_torch_state_dict(params), state)


def test_npz_checkpoint_round_trip(tmp_path):
    config = egs_config("tiny")
    params = torch_state_dict_to_jax(torch_state(config, 0))
    ema = torch_state_dict_to_jax(torch_state(config, 1))
    path = convert.save_jax_params(tmp_path / "ckpt.npz", params, ema, 42, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]
    with np.load(path) as data:  # plain NumPy, no pickle
        assert "model/top_down/levels_down_upsample/1/unpool/ops/0/kernel" in data.files
        assert int(data["step"]) == 42
    loaded = convert.load_jax_params(path)
    assert loaded.step == 42 and loaded.config == config.to_dict()
    for tree, want in ((loaded.params, params), (loaded.ema, ema)):
        got, want = flatten_tree(tree), flatten_tree(want)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    no_ema = convert.load_jax_params(convert.save_jax_params(tmp_path / "b.npz", params, None, 0, None))
    assert no_ema.ema is None and no_ema.config is None
    with pytest.raises(UserError, match="not found"):
        convert.load_jax_params(tmp_path / "missing.npz")


def test_cli_torch_to_jax_to_torch(tmp_path, capsys):
    from efficient_vdvae_core.weights import model_config
    from efficient_vdvae_torch.utils.checkpoint import read_weights
    config = egs_config("tiny")
    model, ema = torch_state(config, 0), torch_state(config, 1)
    torch.save({"step": 500, "model_state_dict": {k: torch.from_numpy(v) for k, v in model.items()},
                "ema_model_state_dict": {k: torch.from_numpy(v) for k, v in ema.items()},
                "optimizer_state_dict": {}, "config": config.to_dict(), "format_version": 1},
               tmp_path / "checkpoint_500.pt")
    run_cli("--to", "jax", tmp_path / "checkpoint_500.pt", tmp_path / "checkpoint_500.npz")
    loaded = convert.load_jax_params(tmp_path / "checkpoint_500.npz")
    assert loaded.step == 500 and loaded.config == config.to_dict() and loaded.ema is not None
    run_cli("--to", "torch", tmp_path / "checkpoint_500.npz", tmp_path / "back.pt")
    assert "step 500" in capsys.readouterr().out
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert back["step"] == 500 and back["config"] == config.to_dict()
    assert_same_state_dict({k: v.numpy() for k, v in back["model_state_dict"].items()}, model)
    assert_same_state_dict({k: v.numpy() for k, v in back["ema_model_state_dict"].items()}, ema)
    rebuilt = model_config(read_weights(tmp_path / "back.pt"), config)  # the loaders read the stored config
    target = build_torch_model(rebuilt)
    target.load_state_dict(back["ema_model_state_dict"], strict=True)


def test_cli_original_torch_file_needs_config_for_checks(tmp_path):
    config = egs_config("tiny_binarized")
    state = {k: torch.from_numpy(v) for k, v in torch_state(config).items()}
    torch.save({"global_step": 99, "model_state_dict": state, "ema_model_state_dict": state,
                "optimizer_state_dict": {}, "scheduler_state_dict": {}}, tmp_path / "checkpoints-orig")
    run_cli("--to", "jax", tmp_path / "checkpoints-orig", tmp_path / "a.npz", "--config", EGS / "tiny_binarized.cfg")
    loaded = convert.load_jax_params(tmp_path / "a.npz")
    assert loaded.step == 100 and loaded.config == config.to_dict()
    with pytest.raises(SystemExit):  # the RGB tiny config does not fit these weights
        run_cli("--to", "jax", tmp_path / "checkpoints-orig", tmp_path / "b.npz", "--config", EGS / "tiny.cfg")
    assert not (tmp_path / "b.npz").exists()


# ---------------------------------------------------------------- the original JAX implementation

def reference_listing():
    lines = (REFERENCE / "jax_params_binarized_mnist_baseline.txt").read_text().splitlines()
    out = {}
    for line in lines:
        if line and not line.startswith("#"):
            path, shape = line.split(" ", 1)
            out[path] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
    return out


def test_original_jax_importer_maps_every_path_of_the_reference_listing():
    listing = reference_listing()
    assert len(listing) == 945
    tree = unflatten_tree({tuple(p.split("/")): jax.ShapeDtypeStruct(s, np.float32)
                           for p, s in listing.items()})
    ours = flatten_tree(import_original_jax_params({"params": tree}))
    config = egs_config("binarized_mnist_baseline")
    expected = dict(abstract_params(build_architecture(config.model, config.data), config.model))
    assert {p: tuple(v.shape) for p, v in ours.items()} == expected
    for path in listing:
        assert ours_to_original_jax_path(original_jax_path_to_ours(path)) == path
    with pytest.raises(ValueError, match="unknown parameter path"):
        original_jax_path_to_ours("top_down/block_down_level_0_upsample/dropout/kernel")


def test_original_jax_round_trip_permutes_the_mol_output_channels():
    config = egs_config("tiny")  # RGB, M = 3: K = 30
    params = torch_state_dict_to_jax(torch_state(config))
    original = export_original_jax_params(params)
    src = mol_channel_permutation(3, 3)
    ours_kernel = params["top_down"]["output_conv"]["kernel"]
    original_kernel = original["top_down"]["output_conv"]["conv"]["kernel"]
    assert np.array_equal(original_kernel[..., src], ours_kernel) and not np.array_equal(original_kernel, ours_kernel)
    assert original["bottom_up"]["block_up_level_0_0"]["residual_block_0"]["conv_2"]["conv"]["kernel"].shape == \
        (1, 1, 8, 16)
    back = flatten_tree(import_original_jax_params({"params": original}))
    flat = flatten_tree(params)
    assert back.keys() == flat.keys() and all(np.array_equal(back[k], flat[k]) for k in flat)


def test_mol_permutation_matches_the_original_layout_and_loss():
    """Original (3M, C) logits permuted to our (C, 3M) layout equal the torch NCHW logits and give its loss."""
    data = np.load(REFERENCE / "loss_vectors" / "mol_8bit_std.npz")
    src = mol_channel_permutation(3, 3)
    ours = data["logits_nchw"].transpose(0, 2, 3, 1)
    assert np.array_equal(data["logits_nhwc"][..., src], ours)
    assert np.array_equal(np.argsort(data["nhwc_channel_source"]), src)
    targets = data["targets_nhwc"]
    kwargs = dict(num_bits=8.0, num_mixtures=3, distribution_base="std", beta=0.6931472, min_log_scale=-250.0)
    loss = float(mol_nll(data["logits_nhwc"][..., src], targets, **kwargs).sum()) / (4 * 192)
    np.testing.assert_allclose(loss, data["loss"], rtol=1e-5)
    np.testing.assert_allclose(loss, data["jax_loss"], rtol=1e-5)
    # an output conv converted with the permutation produces the permuted logits
    rng = np.random.default_rng(0)
    x, kernel, bias = rng.normal(size=(5, 16)), rng.normal(size=(16, 30)), rng.normal(size=30)
    np.testing.assert_allclose((x @ kernel + bias)[:, src], x @ kernel[:, src] + bias[src], rtol=1e-12)


def test_cli_reads_an_original_jax_msgpack_checkpoint(tmp_path):
    from flax import serialization
    config = egs_config("tiny")
    model, ema = torch_state(config, 0), torch_state(config, 1)
    original = export_original_jax_params(torch_state_dict_to_jax(model))
    original_ema = export_original_jax_params(torch_state_dict_to_jax(ema))
    state = {"step": np.asarray(1234), "params": {"params": original}, "ema_params": {"params": original_ema},
             "opt_state": {"0": {"count": np.asarray(1234)}}, "ema_decay": np.asarray(0.9999)}
    (tmp_path / "checkpoint_1234").write_bytes(serialization.msgpack_serialize(state))
    run_cli("--to", "torch", "--from-original-jax", tmp_path / "checkpoint_1234", tmp_path / "out.pt",
            "--config", EGS / "tiny.cfg")
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["step"] == 1234 and out["config"] == config.to_dict()
    assert_same_state_dict({k: v.numpy() for k, v in out["model_state_dict"].items()}, model)
    assert_same_state_dict({k: v.numpy() for k, v in out["ema_model_state_dict"].items()}, ema)
    run_cli("--to", "jax", "--from-original-jax", tmp_path / "checkpoint_1234", tmp_path / "out.npz")
    assert convert.load_jax_params(tmp_path / "out.npz").config is None


def test_cli_reads_an_orbax_checkpoint_folder(tmp_path):
    """A checkpoint_<step>/ Orbax folder (our JAX runs) converts to a torch file with the same weights."""
    from efficient_vdvae_core.checkpoints import Checkpoint, CheckpointFolder
    from efficient_vdvae_jax.utils.checkpoint import OrbaxCodec
    from efficient_vdvae_jax.utils.optim import build_direction
    from efficient_vdvae_jax.utils.state import init_state
    config = egs_config("tiny")
    model = torch_state(config, 0)
    params = jax.tree.map(jax.numpy.asarray, torch_state_dict_to_jax(model))
    folder = CheckpointFolder(tmp_path / "checkpoints-tiny", OrbaxCodec()).save(
        7, Checkpoint(meta={"step": 7, "skips": 0, "consecutive_skips": 0, "config": config.to_dict()},
                      state=init_state(params, build_direction(config.optimizer))), keep=2)
    run_cli("--to", "torch", folder, tmp_path / "out.pt")
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["step"] == 7 and out["config"] == config.to_dict()
    assert_same_state_dict({k: v.numpy() for k, v in out["model_state_dict"].items()}, model)
    assert_same_state_dict({k: v.numpy() for k, v in out["ema_model_state_dict"].items()}, model)


def test_cli_refuses_outputs_that_could_destroy_a_checkpoint(tmp_path, capsys):
    """The input itself, a file in a run's checkpoint folder, a wrong suffix, a missing folder: one line, nothing written."""
    config = egs_config("tiny")
    folder = tmp_path / "checkpoints-tiny"
    folder.mkdir()
    source = folder / "checkpoint_3.pt"
    torch.save({"model_state_dict": {k: torch.from_numpy(v) for k, v in torch_state(config).items()}, "step": 3,
                "format_version": 1, "config": config.to_dict()}, source)
    before = source.read_bytes()
    cases = [(["--to", "torch", source, source], "is the INPUT"),
             (["--to", "torch", source, folder / "checkpoint_4.pt"], "inside a run's checkpoint folder"),
             (["--to", "jax", source, tmp_path / "w.pt"], "--to jax writes a .npz file; name it w.npz"),
             (["--to", "torch", source, tmp_path / "w.npz"], "--to torch writes a .pt file"),
             (["--to", "jax", source, tmp_path / "missing" / "w.npz"], "does not exist")]
    for argv, needle in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            run_cli(*argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1 and needle in err[0], (needle, err)
    assert source.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints-tiny"]
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_3.pt"]
