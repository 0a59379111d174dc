"""A tiny TorchScript detector with the call signature of the Inception network of the sample-quality scores
(random weights: no weights file is needed), for the tests of FID / IS / precision-recall."""
import warnings

import torch
from torch.nn import functional as F


class TinyDetector(torch.nn.Module):
    """Random features and class probabilities with the call signature of inception-2015-12-05.pt."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.classes = torch.nn.Linear(16, 10)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        x = F.interpolate(img.to(torch.float32) / 127.5 - 1.0, size=(16, 16), mode="bilinear", align_corners=False)
        features = F.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 2).flatten(1)  # (N, 16)
        if return_features:
            return features
        return torch.softmax(4.0 * self.classes(features), dim=1)


def write_tiny_detector(path):
    """Save a TinyDetector (seeded weights) as TorchScript at `path`; returns the path."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(TinyDetector()).save(str(path))
    return path
