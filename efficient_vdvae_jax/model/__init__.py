"""The Efficient-VDVAE network in Flax NNX (NHWC), mirroring efficient_vdvae_torch.model."""
