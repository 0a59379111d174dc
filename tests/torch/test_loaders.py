"""Torch loaders: rank shards, exact resume, worker-count independence, eval sharding."""
import dataclasses
import itertools

import pytest
import torch

from efficient_vdvae_core.data import make_dataset
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.evaluation import EvalPlan
from efficient_vdvae_torch.data.loaders import TrainBatchSampler, make_train_loader, plan_loader


def with_batch(config, batch_size):
    return config.replace(train=dataclasses.replace(config.train, batch_size=batch_size))


def take(stream, n):
    return list(itertools.islice(stream, n))


def test_rank_shards_union_to_the_global_batch(tiny_config):
    cfg = with_batch(tiny_config, 6)
    single = take(make_train_loader(cfg, rank=0, world_size=1, num_workers=0), 3)
    assert single[0].shape == (6, 3, 32, 32) and single[0].dtype == torch.float32
    for world in (2, 3):
        shards = [take(make_train_loader(cfg, rank=r, world_size=world, num_workers=0), 3) for r in range(world)]
        for step, batch in enumerate(single):
            for r in range(world):
                assert torch.equal(shards[r][step], batch[r::world])


def test_resume_continues_the_stream_across_an_epoch(tiny_binarized_config):
    cfg = with_batch(tiny_binarized_config, 64)
    stream = make_train_loader(cfg, rank=0, world_size=1, num_workers=0)
    assert stream.steps_per_epoch == 1297 // 64
    start = stream.steps_per_epoch - 2
    whole = take(stream, start + 4)
    resumed = take(make_train_loader(cfg, rank=0, world_size=1, start_step=start, num_workers=0), 4)
    assert all(torch.equal(a, b) for a, b in zip(whole[start:], resumed))
    assert set(torch.unique(whole[-1]).tolist()) <= {0.0, 1.0}


def test_sampler_epochs_are_permutations():
    sampler = TrainBatchSampler(10, 4, rank=0, world_size=1, seed=0)
    steps = take(iter(sampler), 6)                       # 2 steps per epoch, 2 images left out each epoch
    for epoch in range(3):
        indices = [i for batch in steps[2 * epoch:2 * epoch + 2] for i, e in batch]
        assert len(set(indices)) == 8 and all(e == epoch for batch in steps[2 * epoch:2 * epoch + 2] for _, e in batch)
    assert steps[0] != steps[2]


def test_same_batches_for_any_worker_count(tiny_config):
    cfg = with_batch(tiny_config, 4)
    batches = [take(make_train_loader(cfg, rank=0, world_size=1, start_step=5, num_workers=n), 2) for n in (0, 2)]
    assert all(torch.equal(a, b) for a, b in zip(*batches))


def test_batch_must_divide_among_ranks(tiny_config):
    with pytest.raises(UserError, match="divisible"):
        make_train_loader(with_batch(tiny_config, 6), rank=0, world_size=4)


def test_eval_loader_shards_without_duplicates(tiny_config):
    """3 processes over a plan of 20 images in global batches of 9: every real image once, padding repeats the last."""
    val = make_dataset(tiny_config.data, "val", seed=tiny_config.run.seed, n_samples=20)
    names = []
    for rank in range(3):
        plan = EvalPlan(len(val), 9, n_shards=3, n_processes=3, process_index=rank)
        batches = list(plan_loader(tiny_config, val, plan, with_names=True, num_workers=0))
        assert len(batches) == len(plan) == 3
        assert all(isinstance(b[1], list) and len(b[1]) == 3 and b[0].shape == (3, 3, 32, 32) for b in batches)
        for rows, (_, batch_names) in zip(plan, batches):
            names += [n for n, valid in zip(batch_names, rows.valid) if valid]
            assert all(n == val.name(19) for n, valid in zip(batch_names, rows.valid) if not valid)
        assert [rows.n_valid for rows in plan] == [3, 3, [2, 0, 0][rank]]
    one = EvalPlan(len(val), 8)
    whole = [n for _, batch_names in plan_loader(tiny_config, val, one, with_names=True, num_workers=0)
             for n in batch_names][:len(val)]
    assert sorted(names) == sorted(whole) and len(set(whole)) == 20 and whole == val.names
    test = make_dataset(tiny_config.data, "test", seed=tiny_config.run.seed)
    plain = next(iter(plan_loader(tiny_config, test, EvalPlan(len(test), 5), num_workers=0)))
    assert isinstance(plain, torch.Tensor) and plain.shape == (5, 3, 32, 32)
