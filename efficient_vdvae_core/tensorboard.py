"""A framework-neutral TensorBoard event writer (NumPy + Pillow + the tensorboard package's protobufs).

    writer = EventWriter("logs-run/train")
    writer.scalar("Losses/nelbo", 3.1, step)
    writer.histogram("Distributions/output", values, step, bins=20)
    writer.image("Images/Original", uint8_hwc, step)
    writer.close()

`RunLogger` is what both frameworks' training loops log through: the `train` and `val` runs of
`logs-<name>/` plus `metrics.jsonl`.

The files are the same `events.out.tfevents.*` records that `torch.utils.tensorboard.SummaryWriter` and
TensorFlow write, readable by TensorBoard and `event_accumulator.EventAccumulator`.
"""
import io
import json
import time

import numpy as np
from PIL import Image
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def histogram_proto(values, bins):
    """HistogramProto of `values` over `bins` equal-width buckets between their min and max."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return HistogramProto(min=0.0, max=0.0, num=0, sum=0.0, sum_squares=0.0, bucket_limit=[0.0], bucket=[0.0])
    low, high = float(values.min()), float(values.max())
    counts, edges = np.histogram(values, bins=bins, range=(low, high + 1e-12 if high == low else high))
    return HistogramProto(min=low, max=high, num=int(values.size), sum=float(values.sum()),
                          sum_squares=float(np.dot(values, values)), bucket_limit=edges[1:].tolist(),
                          bucket=counts.astype(np.float64).tolist())


def image_proto(image):
    """Summary.Image of one uint8 (H, W, C) image, C in {1, 3, 4}, PNG-encoded."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image summaries need a uint8 (H, W, C) array with C in 1, 3, 4; got {image.dtype} "
                         f"{image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    h, w, c = image.shape
    return Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=buffer.getvalue())


class EventWriter:
    """Scalars, histograms and images of one TensorBoard run folder."""

    def __init__(self, logdir):
        self.logdir = str(logdir)
        self._writer = EventFileWriter(self.logdir)

    def _add(self, step, value):
        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=[value])))

    def scalar(self, tag, value, step):
        self._add(step, Summary.Value(tag=tag, simple_value=float(value)))

    def histogram(self, tag, values, step, bins):
        self._add(step, Summary.Value(tag=tag, histo=histogram_proto(values, bins)))

    def image(self, tag, image, step):
        """One uint8 (H, W, C) image."""
        self._add(step, Summary.Value(tag=tag, image=image_proto(image)))

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


class RunLogger:
    """Writes `logs-<name>/train` and `/val` TensorBoard events and `logs-<name>/metrics.jsonl`.

    With `enabled=False` (ranks / processes other than 0) every call does nothing and nothing is opened;
    otherwise each file is opened when first written, so an invocation that logs nothing leaves no file.
    """

    def __init__(self, paths, enabled=True):
        self.enabled = enabled
        self.paths = paths
        self.writers, self.jsonl = {}, None  # opened on first use: no empty event files

    def _writer(self, split):
        if split not in self.writers:
            folder = {"train": self.paths.train_events, "val": self.paths.val_events}[split]
            self.writers[split] = EventWriter(folder)
        return self.writers[split]

    def scalars(self, split, step, metrics, label=None):
        """Log a dict of tag -> float under `split` and append one JSON line (its "split": `label` or `split`)."""
        if not self.enabled:
            return
        for tag, value in metrics.items():
            self._writer(split).scalar(tag, value, step)
        if self.jsonl is None:
            self.jsonl = open(self.paths.logs / "metrics.jsonl", "a", encoding="utf-8")
        self.jsonl.write(json.dumps({"split": label or split, "step": step, "time": time.time(), **metrics}) + "\n")
        self.jsonl.flush()

    def histogram(self, split, step, tag, values, bins):
        if self.enabled:
            self._writer(split).histogram(tag, values, step, bins)

    def image(self, split, step, tag, image_hwc_uint8):
        if self.enabled:
            self._writer(split).image(tag, image_hwc_uint8, step)

    def flush(self):
        for w in self.writers.values():
            w.flush()

    def close(self):
        for w in self.writers.values():
            w.close()
        if self.jsonl:
            self.jsonl.close()
        self.writers, self.jsonl = {}, None
