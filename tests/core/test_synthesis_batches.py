"""The interpolation and sample_quality modes on two replicas with a fake inference backend: every batch the
backend sees is a multiple of the replicas (the last one padded), and the padding never reaches the files."""
import numpy as np
from PIL import Image

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.runs import run_paths
from efficient_vdvae_core.synthesis.common import Context, InferenceOptions, Loaded, open_split
from efficient_vdvae_core.synthesis.latents import run_interpolation
from efficient_vdvae_core.synthesis.quality import run_sample_quality
from efficient_vdvae_core.training.backend import Dist
from efficient_vdvae_core.training.images import images_to_uint8
from tests.conftest import egs_config

TWO_REPLICAS = Dist(process_index=0, n_processes=1, n_shards=2, description="2 fake replicas")


class FakeInference:
    """Latents: every variate of an image's layers is its mean pixel value; a decoded image is filled with
    the mean of its top layer's z, a prior sample with its index / 100. Records each batch size."""

    def __init__(self, arch):
        self.arch, self.sizes = arch, []

    def _seen(self, n):
        self.sizes.append(int(n))

    def eval_batches(self, dataset, plan):
        for rows in plan:
            yield np.stack([dataset.load(int(i)) for i in rows.images])

    def posterior_means(self, batch, rows, masks):
        self._seen(len(batch))
        value = batch.mean(axis=(1, 2, 3))
        return [(np.broadcast_to(value[:, None, None, None], (len(batch), b.resolution, b.resolution,
                                                               b.latent_variates)).copy(), None)
                for b in self.arch.latent_layers]

    def decode(self, latents, indices, temperatures=None, purpose=None, counter=0):
        self._seen(len(indices))
        top = latents[0][0].mean(axis=(1, 2, 3))
        return np.broadcast_to(top[:, None, None, None], (len(indices), 32, 32, 3)).astype(np.float32)

    def sample(self, indices, temperatures, counter):
        self._seen(len(indices))
        value = np.asarray(indices, np.float32) / 100
        return np.broadcast_to(value[:, None, None, None], (len(indices), 32, 32, 3)).copy()


def context(tmp_path, *sets):
    config = egs_config("tiny", "synthesis.batch_size=3", *sets)
    arch = build_architecture(config.model, config.data)
    loaded = Loaded(config=config, arch=arch, checkpoint=tmp_path / "checkpoint_4.pt", step=4, weights="ema",
                    fingerprint={})
    return Context(loaded=loaded, paths=run_paths("tiny", tmp_path), backend=FakeInference(arch), dist=TWO_REPLICAS,
                   options=InferenceOptions(), framework="fake", log=lambda *a, **k: None)


def test_interpolation_batches_fit_the_replicas(tmp_path):
    ctx = context(tmp_path, "synthesis.synthesis_mode='interpolation'", "synthesis.interpolation_pairs=3",
                  "synthesis.interpolation_points=5")
    written = run_interpolation(ctx)
    assert len(written) == 6 and all(n % 2 == 0 for n in ctx.backend.sizes) and 3 not in ctx.backend.sizes
    images = np.stack([open_split(ctx.config, "test", 6).load(i) for i in range(6)])
    ends = images.mean(axis=(1, 2, 3))
    strip = np.asarray(Image.open(written[2]))  # pair 1, linear: images 2 and 3
    tiles = [strip[2:34, 2 + j * 34:34 + j * 34] for j in range(5)]
    expected = [ends[2] + (ends[3] - ends[2]) * j / 4 for j in range(5)]
    for tile, value in zip(tiles, expected):
        target = images_to_uint8(np.full((1, 32, 32, 3), value, np.float32), ctx.config)[0]
        np.testing.assert_array_equal(tile, target)


def test_sample_quality_generates_in_padded_batches(tmp_path):
    ctx = context(tmp_path, "synthesis.synthesis_mode='sample_quality'", "synthesis.quality_samples=7")
    assert run_sample_quality(ctx, None) is None  # no scorer (JAX without PyTorch): the folders and the command
    folder = run_paths("tiny", tmp_path).synthesis_images / "sample_quality" / "ema-step4-n7-out1"
    generated = sorted((folder / "generated").iterdir())
    assert [p.name for p in generated] == [f"image-{i:05d}.png" for i in range(7)]
    assert ctx.backend.sizes == [4, 4]  # batches of 3 rounded up to the 2 replicas; the last padded
    np.testing.assert_array_equal(np.asarray(Image.open(generated[6])),
                                  images_to_uint8(np.full((1, 32, 32, 3), 0.06, np.float32), ctx.config)[0])
