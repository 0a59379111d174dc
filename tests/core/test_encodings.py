"""The encodings folder format: streamed writing, reading with NumPy alone, atomic replacement, errors."""
import json

import numpy as np
import pytest

from efficient_vdvae_core.encodings import (FORMAT_VERSION, EncodingsError, EncodingWriter, LayerSpec,
                                            check_same_model, kept_layer_specs, model_fingerprint, read_encodings,
                                            safe_file_stems)
from tests.conftest import egs_config

N_VARIATES = [4, 4, 4]


def _specs():
    masks = np.array([[0, 0, 0, 0], [1, 0, 1, 1], [0, 1, 0, 0]], dtype=bool)
    return kept_layer_specs(masks, [1, 4, 8])


def _blocks(specs, n, seed):
    rng = np.random.default_rng(seed)
    means = {s.layer: rng.normal(size=(n, *s.shape)).astype(np.float32) for s in specs}
    stds = {s.layer: rng.uniform(0.1, 2, size=(n, *s.shape)).astype(np.float32) for s in specs}
    return means, stds


def _write(folder, n=5, seed=0, batch=3, extra=None, fingerprint=None):
    specs = _specs()
    means, stds = _blocks(specs, n, seed)
    names = [f"img_{i}.png" for i in range(n - 1)] + ["odd\u2028name\x0c.png"]  # not line breaks in names.txt
    with EncodingWriter(folder, specs, n, N_VARIATES, extra or {"run_name": "t"}, fingerprint) as writer:
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            writer.write(start, {k: v[start:stop] for k, v in means.items()},
                         {k: v[start:stop] for k, v in stds.items()}, names[start:stop])
        writer.close()
    return means, stds, names


def test_kept_layer_specs_skip_layers_without_kept_variates():
    specs = _specs()
    assert [(s.layer, s.height, s.kept_variates) for s in specs] == [(1, 4, (0, 2, 3)), (2, 8, (1,))]
    assert specs[0].shape == (4, 4, 3) and specs[0].mean_file == "layer_1_mean.npy"


def test_round_trip_in_batches(tmp_path):
    folder = tmp_path / "enc"
    means, stds, names = _write(folder)
    enc = read_encodings(folder)
    assert enc.names == names and len(enc) == 5
    assert enc.metadata["format_version"] == FORMAT_VERSION and enc.metadata["run_name"] == "t"
    assert enc.metadata["n_variates"] == N_VARIATES and enc.metadata["n_latent_layers"] == 3
    assert [s.layer for s in enc.layers] == [1, 2]
    for layer in (1, 2):
        assert isinstance(enc.means[layer], np.memmap) and not enc.means[layer].flags.writeable
        np.testing.assert_array_equal(enc.means[layer], means[layer])
        np.testing.assert_array_equal(enc.stds[layer], stds[layer])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]  # no partial folder left


def test_readable_with_numpy_and_json_alone(tmp_path):
    means, _, names = _write(tmp_path / "enc")
    folder = tmp_path / "enc"
    meta = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    assert (folder / meta["names_file"]).read_text(encoding="utf-8").split("\n")[:-1] == names
    for layer in meta["layers"]:
        array = np.load(folder / layer["mean_file"])
        assert array.dtype == np.float32 and array.shape == (meta["n_images"], layer["height"], layer["width"],
                                                            len(layer["kept_variates"]))
        np.testing.assert_array_equal(array, means[layer["layer"]])


def test_rewrite_replaces_and_failure_keeps_previous(tmp_path):
    folder = tmp_path / "enc"
    _write(folder, n=5, seed=0)
    means, _, _ = _write(folder, n=4, seed=1)
    enc = read_encodings(folder)
    assert len(enc) == 4
    np.testing.assert_array_equal(enc.means[1], means[1])
    with pytest.raises(RuntimeError), EncodingWriter(folder, _specs(), 2, N_VARIATES):
        raise RuntimeError("interrupted")
    assert len(read_encodings(folder)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]


def test_writer_rejects_bad_input(tmp_path):
    specs = _specs()
    means, stds = _blocks(specs, 2, 0)
    with EncodingWriter(tmp_path / "enc", specs, 2, N_VARIATES) as writer:
        with pytest.raises(ValueError, match="line break"):
            writer.write(0, means, stds, ["a\nb", "c"])
        with pytest.raises(ValueError, match="outside"):
            writer.write(1, means, stds, ["a", "b"])
        with pytest.raises(ValueError, match="shape"):
            writer.write(0, {k: v[:, :1] for k, v in means.items()}, stds, ["a", "b"])
        writer.write(0, {k: v[:1] for k, v in means.items()}, {k: v[:1] for k, v in stds.items()}, ["a"])
        with pytest.raises(ValueError, match="never written"):
            writer.close()
        writer.abort()
    assert not (tmp_path / "enc").exists()


def test_read_errors_name_the_problem(tmp_path):
    with pytest.raises(EncodingsError, match="'encoding'"):
        read_encodings(tmp_path / "missing")
    (tmp_path / "partial").mkdir()
    with pytest.raises(EncodingsError, match="incomplete"):
        read_encodings(tmp_path / "partial")
    folder = tmp_path / "enc"
    _write(folder)
    meta_path = folder / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(EncodingsError, match="version 99"):
        read_encodings(folder)
    meta_path.write_text(json.dumps(meta))
    np.save(folder / "layer_2_std.npy", np.zeros((5, 8, 8, 2), np.float32))
    with pytest.raises(EncodingsError, match="layer_2_std.npy"):
        read_encodings(folder)


def test_safe_file_stems():
    names = ["a/b/c.jpg", "embedded_rgb_7", "x y?.png", "a\\b\\c.jpg", "", "archive.tar.gz", "..."]
    assert safe_file_stems(names) == ["a_b_c", "embedded_rgb_7", "x_y", "a_b_c-0003", "image-0004",
                                      "archive.tar", "image-0006"]


def test_layer_spec_json():
    spec = LayerSpec(layer=3, height=2, width=2, kept_variates=(0, 5))
    assert spec.to_json() == {"layer": 3, "height": 2, "width": 2, "kept_variates": [0, 5],
                              "mean_file": "layer_3_mean.npy", "std_file": "layer_3_std.npy"}


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {"top_down.output_conv.weight": rng.normal(size=(30, 16, 1, 1)).astype(np.float32),
            "top_down.output_conv.bias": rng.normal(size=30).astype(np.float32)}


def test_model_fingerprint_hashes_the_model_shaping_config_and_every_weight():
    config, weights = egs_config("tiny"), _weights()
    fingerprint = model_fingerprint(config, weights)
    assert set(fingerprint) == {"config_sha256", "weights_sha256"}
    assert all(len(v) == 16 and int(v, 16) >= 0 for v in fingerprint.values())
    assert model_fingerprint(config.to_dict(), dict(reversed(list(weights.items())))) == fingerprint
    # training, synthesis and run keys do not shape the model; [model] and [data] channels do
    same = egs_config("tiny", "train.batch_size=4", "synthesis.output_temperature=0.5", "run.name='other'")
    assert model_fingerprint(same, weights) == fingerprint
    wider = model_fingerprint(egs_config("tiny", "model.num_output_mixtures=4"), weights)
    assert wider["config_sha256"] != fingerprint["config_sha256"] and wider["weights_sha256"] == \
        fingerprint["weights_sha256"]
    nudged = {k: v.copy() for k, v in weights.items()}
    nudged["top_down.output_conv.bias"][7] = np.nextafter(nudged["top_down.output_conv.bias"][7], np.float32(9))
    changed = model_fingerprint(config, nudged)
    assert changed["weights_sha256"] != fingerprint["weights_sha256"]
    assert changed["config_sha256"] == fingerprint["config_sha256"]


def test_decoding_with_another_model_is_refused_unless_allowed(tmp_path):
    config = egs_config("tiny")
    ours, other = model_fingerprint(config, _weights(0)), model_fingerprint(config, _weights(1))
    _write(tmp_path / "enc", fingerprint=ours)
    enc = read_encodings(tmp_path / "enc")
    assert enc.metadata["model_fingerprint"] == ours
    check_same_model(enc.metadata, ours, allow_other_model=False)
    with pytest.raises(EncodingsError) as info:
        check_same_model(enc.metadata, other, allow_other_model=False, source=enc.folder)
    message = str(info.value)
    assert "\n" not in message and str(enc.folder) in message and "--allow-other-model" in message
    assert ours["weights_sha256"] in message and other["weights_sha256"] in message
    check_same_model(enc.metadata, other, allow_other_model=True)
    _write(tmp_path / "old")  # no fingerprint: refused too, unless allowed
    with pytest.raises(EncodingsError, match="written without a model fingerprint"):
        check_same_model(read_encodings(tmp_path / "old").metadata, ours, allow_other_model=False)


@pytest.mark.parametrize("damage", ["nan_mean", "inf_mean", "inf_std", "negative_std"])
def test_non_finite_values_are_refused_naming_file_and_image(tmp_path, damage, monkeypatch):
    import efficient_vdvae_core.encodings as encodings
    monkeypatch.setattr(encodings, "CHECK_CHUNK_BYTES", 100)  # several chunks per file
    folder = tmp_path / "enc"
    _write(folder)
    kind, value = {"nan_mean": ("mean", np.nan), "inf_mean": ("mean", np.inf), "inf_std": ("std", -np.inf),
                   "negative_std": ("std", -0.5)}[damage]
    array = np.load(folder / f"layer_1_{kind}.npy", mmap_mode="r+")
    array[3, 2, 1, 0] = value
    array.flush()
    del array
    with pytest.raises(EncodingsError) as info:
        read_encodings(folder)
    message = str(info.value)
    assert f"layer_1_{kind}.npy" in message and "at image 3, 'img_3.png'" in message and "\n" not in message
    assert len(read_encodings(folder, check_values=False)) == 5
