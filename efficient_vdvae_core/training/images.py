"""Images of training-time evaluation: conversion to uint8 and the size of the grids."""
from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.images import to_uint8
from efficient_vdvae_core.metrics import MNIST_CROP

GRID_IMAGES = 8  # images per row of the samples PNG and per TensorBoard grid


def grid_images():
    """How many images each row of a training-time grid shows."""
    return GRID_IMAGES


def images_to_uint8(images, config):
    """Float (B, H, W, C) images -> uint8; binarized 32x32 inputs cropped to the 28x28 digit."""
    binarized = is_binarized(config.data)
    if binarized and images.shape[1] == 32:
        images = images[:, MNIST_CROP, MNIST_CROP]
    return to_uint8(images, binarized=binarized)
