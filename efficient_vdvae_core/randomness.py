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

# Purposes (the second integer of every derivation). Never renumber: outputs of earlier runs were made
# with these values.
TRAIN_LATENTS = 1  # posterior eps of a training step (global batch; counter = step)
EVALUATION = 2  # validation (counter = step) and the reconstruction mode (counter = 0)
PRIOR_SAMPLES = 3  # the EMA prior samples shown during training (counter = step)
GENERATION = 4  # generation mode (counter = temperature setting)
ENCODING = 5  # encoding mode (prior eps of masked variates)
DECODING = 6  # decoding mode (eps of posterior samples, prior eps of the variates not encoded)
DIV_STATS = 7  # div_stats mode (posterior eps)
IW_NLL = 8  # importance-weighted NLL (counter = sample number k)
CONDITIONAL = 9  # partial-latent sampling (counter = sample number)
INTERPOLATION = 10  # interpolation (prior eps of the variates not fixed)
TRAIN_EVALUATION = 11  # the evaluation of the last training batch at an evaluation step (counter = step)

# Streams of one image's draw (the last integer): which tensor of the image it fills.
LATENT_STREAM = 0  # posterior eps (or prior eps of sampling), every latent layer
PRIOR_STREAM = 1  # prior eps of the variates that masks set to the prior
OUTPUT_STREAM = 2  # uniforms of the output head's sample

SEED_BITS = 63  # derived seeds are in [0, 2**63): every generator accepts them


def derived_seed(seed, purpose, *counters):
    """A 63-bit integer that depends on (seed, purpose, *counters) only (NumPy SeedSequence hashing)."""
    words = np.random.SeedSequence([int(seed), int(purpose), *map(int, counters)]).generate_state(1, np.uint64)
    return int(words[0]) & ((1 << SEED_BITS) - 1)


def image_seeds(seed, purpose, counter, indices, stream=LATENT_STREAM):
    """derived_seed(seed, purpose, counter, i, stream) for every image index i: a list of ints."""
    return [derived_seed(seed, purpose, counter, int(i), stream) for i in indices]
