"""Every random draw of a run is a function of (run.seed, purpose, counters): the purposes, in one table.

Training draws its latent noise on the device, one draw for the global batch of a step, from a
framework generator seeded by (seed, TRAIN_LATENTS, step): PyTorch seeds a `torch.Generator` with
`derived_seed(...)`, JAX folds the same integers into `jax.random.key(seed)`. Evaluation and synthesis
draw per image: image i (its index in the split) of a pass identified by `counter` (the training step
of a validation, the temperature setting of generation, 0 otherwise) uses (seed, purpose, counter, i).
So a result never depends on the batch size, the number of processes or devices, the evaluation
interval, or on what ran before in the process.

The two frameworks use different generators, so their draws differ in value; each framework is
invariant as above, and the parity tests pass the same noise to both.
"""
import numpy as np

# Purposes (the second integer of every derivation). Never renumber: checkpoints and outputs of
# earlier runs were made with these values.
TRAIN_LATENTS = 1  # posterior eps of a training step (global batch)
EVAL_LATENTS = 2  # posterior eps of validation and reconstruction, per image
EVAL_PRIOR = 3  # prior eps of variates masked by div_stats, per image
EVAL_OUTPUT = 4  # output-head samples of validation and reconstruction, per image
PRIOR_SAMPLES = 5  # the prior samples shown during training (counter = step), per image
GENERATION = 6  # generation mode (counter = temperature setting), per image: latents and output
ENCODING = 7  # encoding mode: prior eps of masked variates, per image
DECODING = 8  # decoding mode: posterior-sample eps and prior eps of unkept variates, per image
DIV_STATS = 9  # div_stats mode: posterior eps, per image
IW_NLL = 10  # importance-weighted NLL: posterior eps of sample k (counter = k), per image
CONDITIONAL = 11  # partial-latent sampling (counter = sample number), per image

# Sub-streams of one per-image draw (the last integer): which tensor of the image it fills.
LATENT_STREAM, PRIOR_STREAM, OUTPUT_STREAM = 0, 1, 2

SEED_BITS = 63  # derived seeds are in [0, 2**63): every generator accepts them


def derived_seed(seed, purpose, *counters):
    """A 63-bit integer that depends on (seed, purpose, *counters) only (NumPy SeedSequence hashing)."""
    words = np.random.SeedSequence([int(seed), int(purpose), *map(int, counters)]).generate_state(1, np.uint64)
    return int(words[0]) & ((1 << SEED_BITS) - 1)


def image_seeds(seed, purpose, counter, indices, stream=LATENT_STREAM):
    """derived_seed(seed, purpose, counter, i, stream) for every image index i: a list of ints."""
    return [derived_seed(seed, purpose, counter, int(i), stream) for i in indices]


def fold_path(purpose, *counters):
    """The integers a JAX key is folded with, in order, for `derived_seed`'s arguments after the seed."""
    return (int(purpose), *map(int, counters))
