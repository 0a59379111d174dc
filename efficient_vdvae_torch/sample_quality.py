"""FID, Inception Score and precision/recall of a folder of generated PNGs against a folder of real ones.

    python -m efficient_vdvae_torch.sample_quality --real DIR --fake DIR --inception PATH

The detector is a TorchScript Inception-v3 read from a local file (nothing is downloaded): the one of
StyleGAN2-ADA's metrics, inception-2015-12-05.pt (the TensorFlow FID network converted to TorchScript;
INCEPTION_URL). Any TorchScript module with its interface works: detector(images, return_features=True)
-> (N, D) features (2048 pool features), detector(images, no_output_bias=True) -> (N, C) class
probabilities (C = 1008), for images uint8 (N, 3, H, W) in 0..255; it resizes them to its input size
itself. FID and precision/recall use the features, the Inception Score the class probabilities of the
generated images. Images are read batch by batch; grayscale ones are repeated to 3 channels. The math
is in efficient_vdvae_core.sample_quality; the JSON report names the weights file and its SHA-256.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from efficient_vdvae_core import sample_quality as metrics
from efficient_vdvae_core.cli import build_tool_parser, run_main
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.runs import atomic_write_text
from efficient_vdvae_core.synthesis.common import progress

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = f"https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/{INCEPTION_FILE}"
DEFAULT_INCEPTION = Path("~/.cache/efficient_vdvae") / INCEPTION_FILE
REPORT_FILE = "sample_quality.json"
PROBABILITY_TOLERANCE = 1e-3  # rows summing to 1 within this (and >= 0) are probabilities, others logits


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def png_files(folder, max_images=None):
    """The sorted *.png files of a folder (the first `max_images`); UserError if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: image folder not found")
    files = sorted(folder.glob("*.png"))
    if not files:
        raise UserError(f"{folder}: no .png images in this folder")
    return files[:max_images] if max_images else files


def read_images(paths, resize=None):
    """uint8 (B, H, W, 3) of PNG files, resized to resize x resize (PIL bicubic) when `resize` is given."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if resize:
                    image = image.resize((resize, resize), Image.Resampling.BICUBIC)
                images.append(np.asarray(image))
        except OSError as exc:
            raise UserError(f"{path}: cannot read this image ({exc})") from None
        if images[-1].shape != images[0].shape:
            raise UserError(f"{path} is {images[-1].shape[1]}x{images[-1].shape[0]} but {paths[0]} is "
                            f"{images[0].shape[1]}x{images[0].shape[0]}; pass --resize N to bring all to N x N")
    return np.stack(images)


def load_detector(path, device):
    """The TorchScript detector at `path` in eval mode; UserError saying where to get it if it is missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"Inception weights not found at {path}: download {INCEPTION_FILE} from {INCEPTION_URL} "
                        f"and save it there, or pass --inception with the path of your copy")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated")
            return torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{path}: not a TorchScript detector ({_first_line(exc)})") from None


def as_logits(outputs):
    """Class outputs (N, C) as logits: log of probabilities (rows >= 0 summing to 1), other outputs unchanged."""
    outputs = outputs.double()
    if (outputs >= 0).all() and torch.allclose(outputs.sum(1), torch.ones_like(outputs[:, 0]),
                                               atol=PROBABILITY_TOLERANCE):
        return torch.log(outputs.clamp_min(1e-300))
    return outputs


@torch.no_grad()
def detector_outputs(detector, paths, *, batch_size, resize, device, with_classes, desc):
    """(features (N, D) float64, class logits (N, C) float64 or None) of the images at `paths`, batch by batch."""
    features, logits = [], []
    starts = range(0, len(paths), batch_size)
    for start in progress(starts, len(starts), desc):
        images = torch.from_numpy(read_images(paths[start:start + batch_size], resize)).permute(0, 3, 1, 2)
        images = images.contiguous().to(device)
        try:
            features.append(detector(images, return_features=True).double().cpu().numpy())
            if with_classes:
                logits.append(as_logits(detector(images, no_output_bias=True)).cpu().numpy())
        except RuntimeError as exc:
            raise UserError(f"the detector failed on {paths[start]} and the rest of its batch "
                            f"({_first_line(exc)}); it needs the interface of {INCEPTION_FILE}") from None
    return np.concatenate(features), (np.concatenate(logits) if with_classes else None)


def evaluate_folders(real, fake, inception, *, batch_size=50, resize=None, k=3, splits=10, max_images=None,
                     device="cpu"):
    """The report (a JSON-ready dict) of FID, IS and precision/recall of PNG folder `fake` against `real`."""
    real_files, fake_files = png_files(real, max_images), png_files(fake, max_images)
    device = torch.device(device)
    detector = load_detector(inception, device)
    options = dict(batch_size=batch_size, resize=resize, device=device)
    real_features, _ = detector_outputs(detector, real_files, with_classes=False, desc="real images", **options)
    fake_features, fake_logits = detector_outputs(detector, fake_files, with_classes=True, desc="generated images",
                                                  **options)
    try:
        fid = metrics.frechet_distance_of_features(real_features, fake_features)
        is_mean, is_std = metrics.inception_score(fake_logits, splits)
        precision, recall = metrics.precision_recall(real_features, fake_features, k)
    except ValueError as exc:
        raise UserError(f"{exc} (real: {len(real_files)} images in {real}, generated: {len(fake_files)} in {fake})") \
            from None
    size = lambda files: list(read_images(files[:1]).shape[1:3][::-1])
    return {
        "fid": fid, "inception_score": is_mean, "inception_score_std": is_std, "inception_score_splits": splits,
        "precision": precision, "recall": recall, "precision_recall_k": k,
        "real": {"folder": str(real), "n_images": len(real_files), "image_size_wh": size(real_files)},
        "fake": {"folder": str(fake), "n_images": len(fake_files), "image_size_wh": size(fake_files)},
        "detector": {"path": str(Path(inception).expanduser()),
                     "sha256": metrics.file_sha256(Path(inception).expanduser()),
                     "feature_dim": int(real_features.shape[1]), "n_classes": int(fake_logits.shape[1])},
        "resize": (f"PIL bicubic to {resize}x{resize}, then the detector's own resizing" if resize else
                   "none: images at their own size, resized by the detector to its input size"),
        "notes": "FID in squared detector-feature units; IS and precision/recall of the generated images; "
                 "precision/recall with the k-nearest-neighbour manifolds of Kynkäänniemi et al. 2019",
    }


def _positive(name, value):
    if value is not None and value < 1:
        raise UserError(f"{name} must be >= 1 (got {value})")


def main(args):
    """FID, Inception Score and precision/recall of generated PNG images against real ones."""
    for name in ("batch_size", "resize", "k", "splits", "max_images"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    report = evaluate_folders(args.real, args.fake, args.inception, batch_size=args.batch_size, resize=args.resize,
                              k=args.k, splits=args.splits, max_images=args.max_images, device=device)
    output = Path(args.output) if args.output else Path(args.fake) / REPORT_FILE
    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    print(f"FID {report['fid']:.4f} | IS {report['inception_score']:.4f} +- {report['inception_score_std']:.4f} | "
          f"precision {report['precision']:.4f} | recall {report['recall']:.4f} "
          f"({report['fake']['n_images']} generated vs {report['real']['n_images']} real images)")
    print(f"Wrote {output}")
    return report


def parser():
    p = build_tool_parser(main.__doc__.splitlines()[0])
    p.add_argument("--real", metavar="DIR", required=True, help="folder of real .png images (e.g. a dataset split)")
    p.add_argument("--fake", metavar="DIR", required=True, help="folder of generated .png images")
    p.add_argument("--inception", metavar="PATH", default=str(DEFAULT_INCEPTION),
                   help=f"TorchScript detector file (default: {DEFAULT_INCEPTION}; get {INCEPTION_FILE} from "
                        f"{INCEPTION_URL})")
    p.add_argument("--batch-size", type=int, default=50, help="images per detector call (default 50)")
    p.add_argument("--resize", metavar="N", type=int, default=None,
                   help="resize every image to N x N with PIL bicubic first (default: no resizing; the detector "
                        "resizes to its input size itself)")
    p.add_argument("--k", type=int, default=3, help="nearest neighbour of the precision/recall radii (default 3)")
    p.add_argument("--splits", type=int, default=10, help="parts of the generated set for the Inception Score")
    p.add_argument("--max-images", metavar="N", type=int, default=None, help="only the first N images of each folder")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--output", metavar="PATH", default=None, help=f"JSON report (default: <fake>/{REPORT_FILE})")
    return p


if __name__ == "__main__":
    run_main(main, parser=parser())
