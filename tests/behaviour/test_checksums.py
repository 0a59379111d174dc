"""A flipped bit in a checkpoint's tensor data (silent corruption), in both frameworks: found on load, and
training and synthesis fall back to the previous checkpoint with a warning naming the file, as for a
truncated one; given by path, it is refused in one line.

Two kinds: a bit flipped in the file (PyTorch's .pt zip entries carry no check that torch.load verifies, so
the checksum of each part stored in the checkpoint finds it; Orbax's files carry CRC-32C checks that
find it first), and a checkpoint rewritten with a flipped bit in one weight and its old checksums (what
a bit flipped in memory before a copy, or by a tool that recomputes the file's own checks, leaves): only
the stored checksums can tell, in both frameworks.
"""
import numpy as np
import pytest

from efficient_vdvae_core.cli import run_main
from tests.behaviour.conftest import (EGS, RESUMED, assert_same_state, copy_run, normalise, refused, same_in_both,
                                      snapshot, train_here)

SYNTHESIS = ["--set", "run.device='cpu'", "--set", "run.num_cpus=0", "--set", "synthesis.synthesis_mode='generation'",
             "--set", "synthesis.temperature_settings=[1.0]", "--set", "synthesis.batch_size=2"]


def flip(array):
    """A copy of a float32 array with the lowest bit of its middle element flipped (a change of ~1e-7 relative)."""
    bits = np.array(array, dtype=np.float32).view(np.uint32)
    bits.reshape(-1)[bits.size // 2] ^= 1
    return bits.view(np.float32)


def flip_a_bit_in_the_file(path):
    """PyTorch: flip one bit inside the stored bytes of the first weight tensor of checkpoint file `path`."""
    import torch
    name, tensor = next(iter(torch.load(path, weights_only=True)["model_state_dict"].items()))
    data, blob = tensor.numpy().tobytes(), path.read_bytes()
    assert blob.count(data) == 1, name
    path.write_bytes(blob.replace(data, flip(tensor.numpy()).tobytes()))


def rewrite_with_a_flipped_bit(framework, path):
    """Rewrite checkpoint `path` with one bit of one weight flipped, its stored checksums left as they were (the
    format's own integrity checks, e.g. Orbax's CRC-32C, then pass: only the checkpoint's checksum can tell)."""
    if framework.name == "torch":
        import torch
        state = torch.load(path, weights_only=True)
        name = next(iter(state["model_state_dict"]))
        state["model_state_dict"][name] = torch.from_numpy(flip(state["model_state_dict"][name].numpy()))
        torch.save(state, path)
        return
    import jax
    import orbax.checkpoint as ocp
    from efficient_vdvae_jax.utils.checkpoint import read_orbax_state
    state, meta = read_orbax_state(path)
    leaves, tree = jax.tree_util.tree_flatten(state["params"])
    state = {**state, "params": jax.tree_util.tree_unflatten(tree, [flip(leaves[0]), *leaves[1:]])}
    ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(path.absolute(), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)


def mismatch(path):
    return (f"{path}: corrupt checkpoint (checksum mismatch of its weights: they changed after it was written, "
            "e.g. a flipped bit on disk)")


def test_a_flipped_bit_is_found_and_training_and_synthesis_fall_back(framework, reference, tmp_path, capsys,
                                                                     across):
    """checkpoint_3: a bit flipped in the file; checkpoint_2: rewritten with a flipped bit. Both are named, and
    checkpoint_1 is used; the same command trains on to the uninterrupted run's weights."""
    copy_run(framework, reference.workdir, tmp_path, [1, 2, 3])
    newest, second = framework.path(tmp_path, 3), framework.path(tmp_path, 2)
    if framework.name == "torch":
        flip_a_bit_in_the_file(newest)
        in_the_file = f"warning: {mismatch(newest)}; falling back to {second.name}"
    else:  # a bit flipped in an Orbax file is found by its CRC-32C; the first array file holds the weights
        data = sorted((newest / "state" / "d").iterdir())[0]
        blob = bytearray(data.read_bytes())
        blob[len(blob) // 2] ^= 1
        data.write_bytes(bytes(blob))
        in_the_file = f"warning: {newest}: unreadable checkpoint ("
    rewrite_with_a_flipped_bit(framework, second)
    rewritten = f"warning: {mismatch(second)}; falling back to {framework.path(tmp_path, 1).name}"

    def assert_both_named(out):
        lines = out.splitlines()
        assert any(line.startswith(in_the_file) and line.endswith(f"falling back to {second.name}") for line in lines), out
        assert rewritten in lines, out

    synthesize = framework.synthesize
    synth_args = ["--config", str(EGS / "tiny.cfg"), "--workdir", str(tmp_path), *SYNTHESIS]
    capsys.readouterr()
    run_main(synthesize.main, synth_args, parser=synthesize.parser())
    out = capsys.readouterr().out
    assert_both_named(out)
    assert f"weights loaded from {framework.path(tmp_path, 1)} (step 1)" in out

    before = snapshot(tmp_path)
    line = refused(capsys, synthesize.main, [*synth_args, "--checkpoint", str(second)], synthesize.parser())
    assert line == f"error: {mismatch(second)}"
    assert snapshot(tmp_path) == before
    same_in_both(across, "flipped bit", framework, normalise(line, framework, tmp_path))

    capsys.readouterr()
    train_here(framework, tmp_path, 4, "train.checkpoint_and_eval_interval_in_steps=1")
    out = capsys.readouterr().out
    assert_both_named(out)
    assert RESUMED.search(out).group(2) == "1"
    assert framework.steps(tmp_path) == [1, 2, 3, 4]  # the corrupt ones replaced as training passed them
    for step, path in framework.folder(tmp_path).list():
        assert_same_state(framework, path, reference.states[step])


@pytest.mark.parametrize("framework", ["torch"], indirect=True)
def test_a_flipped_bit_in_a_starting_checkpoint_is_refused(framework, reference, tmp_path, capsys):
    """--from-checkpoint with a corrupt file: one line, nothing written."""
    copy_run(framework, reference.workdir, tmp_path / "source", [2])
    corrupt = framework.path(tmp_path / "source", 2)
    rewrite_with_a_flipped_bit(framework, corrupt)
    work = tmp_path / "work"
    args = ["--config", str(EGS / "tiny.cfg"), "--workdir", str(work), "--from-checkpoint", str(corrupt),
            "--set", "run.device='cpu'", "--set", "run.num_cpus=0"]
    line = refused(capsys, framework.train.main, args, framework.train.parser())
    assert f"{corrupt}: corrupt checkpoint (checksum mismatch of its weights: they changed" in line
    assert not work.exists() or not any(work.iterdir())
