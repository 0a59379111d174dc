"""A framework-neutral TensorBoard event writer (NumPy + Pillow + the tensorboard package's protobufs).

    writer = EventWriter("logs-run/train")
    writer.scalar("Losses/nelbo", 3.1, step)
    writer.histogram("Distributions/output", values, step, bins=20)
    writer.image("Images/Original", uint8_hwc, step)
    writer.close()

`RunLogger` is what both frameworks' training loops log through: the `train` and `val` runs of
`logs-<name>/` plus `metrics.jsonl`.

The files are the same `events.out.tfevents.*` records that `torch.utils.tensorboard.SummaryWriter` and
TensorFlow write, readable by TensorBoard and `event_accumulator.EventAccumulator`, but written in the
calling thread: a full disk is an OSError of the call (the training loop stops in one line), never a
traceback of a writer thread.
"""
import io
import itertools
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from tensorboard.summary.writer.record_writer import RecordWriter


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


class EventFile:
    """A log file appended to synchronously: an OSError (a full disk) is raised to the caller, naming the file.

    A new `events.out.tfevents.*` file (or the file `name`, appended to when it exists) is opened at the first
    write; if nothing could be written to a file created then, it is deleted again, so a run stopped by a
    full disk leaves no empty files behind, however often it is started again.
    """

    def __init__(self, logdir, name=None):
        self.logdir = Path(logdir)
        self.name = name
        self._created = False
        self.path = None
        self._fd = None
        self._written = 0  # bytes of complete records in the file

    @property
    def is_open(self):
        return self._fd is not None

    def write(self, data):
        """Append `data` (complete records); the first write creates the file."""
        if self._fd is None:
            self._create()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            if self._written == 0 and self._created:
                self.close()
                self.path.unlink(missing_ok=True)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        self._written += len(data)

    def _create(self):
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = self.name or (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                             f"{next(_FILE_IDS)}")
        self.path, self._written = self.logdir / name, 0
        self._created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)

    def flush(self):
        """Records go to the operating system as they are written: nothing is held here."""

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_FILE_IDS = itertools.count()


class EventWriter:
    """Scalars, histograms and images of one TensorBoard run folder (an EventFile opened at the first record)."""

    def __init__(self, logdir):
        self.logdir = str(logdir)
        self._file = EventFile(logdir)

    def _add(self, step, value):
        events = [Event(wall_time=time.time(), step=int(step), summary=Summary(value=[value]))]
        if not self._file.is_open:  # a new file starts with its version record, written with its first event
            events.insert(0, Event(wall_time=time.time(), file_version="brain.Event:2"))
        buffer = io.BytesIO()
        records = RecordWriter(buffer)
        for event in events:
            records.write(event.SerializeToString())
        self._file.write(buffer.getvalue())

    def scalar(self, tag, value, step):
        self._add(step, Summary.Value(tag=tag, simple_value=float(value)))

    def histogram(self, tag, values, step, bins):
        self._add(step, Summary.Value(tag=tag, histo=histogram_proto(values, bins)))

    def image(self, tag, image, step):
        """One uint8 (H, W, C) image."""
        self._add(step, Summary.Value(tag=tag, image=image_proto(image)))

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


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
            self.jsonl = EventFile(self.paths.logs, name="metrics.jsonl")
        self.jsonl.write((json.dumps({"split": label or split, "step": step, "time": time.time(), **metrics}) + "\n").encode())

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
