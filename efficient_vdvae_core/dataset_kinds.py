"""The dataset sources a config may name, and which of them are binarized digits."""

DATASET_SOURCES = ("binarized_mnist", "cifar-10", "imagenet", "celebA", "celebAHQ", "ffhq", "custom",
                   "embedded_rgb", "embedded_digits")
# Sources with {0, 1} pixels, a 28x28 digit padded to 32x32, and the Bernoulli output head.
BINARIZED_SOURCES = ("binarized_mnist", "embedded_digits")


def is_binarized(data):
    """True when `data` (a DataConfig) uses binarized digits and the Bernoulli head."""
    return data.dataset_source in BINARIZED_SOURCES
