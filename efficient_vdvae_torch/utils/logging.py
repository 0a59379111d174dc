"""TensorBoard events with the original's tag names, JSON-lines metrics, and the progress line."""
import json
import time

import numpy as np
from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    """Writes `logs-<name>/train` and `/val` TensorBoard events and `logs-<name>/metrics.jsonl` (rank 0 only)."""

    def __init__(self, paths, enabled=True):
        self.enabled = enabled
        self.writers = {}
        self.jsonl = None
        if enabled:
            self.writers = {"train": SummaryWriter(str(paths.train_events)), "val": SummaryWriter(str(paths.val_events))}
            self.jsonl = open(paths.logs / "metrics.jsonl", "a", encoding="utf-8")

    def scalars(self, split, step, metrics):
        """Log a dict of tag -> float under `split` and append one JSON line."""
        if not self.enabled:
            return
        for tag, value in metrics.items():
            self.writers[split].add_scalar(tag, value, step)
        self.jsonl.write(json.dumps({"split": split, "step": step, "time": time.time(), **metrics}) + "\n")
        self.jsonl.flush()

    def histogram(self, split, step, tag, values, bins):
        if self.enabled:
            values = np.asarray(values, dtype=np.float64).ravel()
            edges = np.linspace(values.min(), values.max() + 1e-12, bins + 1) if values.size else bins
            self.writers[split].add_histogram(tag, values, step, bins=edges)

    def image(self, split, step, tag, image_hwc_uint8):
        if self.enabled:
            self.writers[split].add_image(tag, image_hwc_uint8, step, dataformats="HWC")

    def flush(self):
        for w in self.writers.values():
            w.flush()

    def close(self):
        for w in self.writers.values():
            w.close()
        if self.jsonl:
            self.jsonl.close()
        self.writers, self.jsonl = {}, None
