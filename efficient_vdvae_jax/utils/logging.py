"""TensorBoard events with the original's tag names and JSON-lines metrics (process 0 only)."""
import json
import time

from efficient_vdvae_core.tensorboard import EventWriter


class RunLogger:
    """Writes `logs-<name>/train` and `/val` TensorBoard events and `logs-<name>/metrics.jsonl`."""

    def __init__(self, paths, enabled=True):
        self.enabled = enabled
        self.writers, self.jsonl = {}, None
        if enabled:
            self.writers = {"train": EventWriter(paths.train_events), "val": EventWriter(paths.val_events)}
            self.jsonl = open(paths.logs / "metrics.jsonl", "a", encoding="utf-8")

    def scalars(self, split, step, metrics):
        """Log a dict of tag -> float under `split` and append one JSON line."""
        if not self.enabled:
            return
        for tag, value in metrics.items():
            self.writers[split].scalar(tag, value, step)
        self.jsonl.write(json.dumps({"split": split, "step": step, "time": time.time(), **metrics}) + "\n")
        self.jsonl.flush()

    def histogram(self, split, step, tag, values, bins):
        if self.enabled:
            self.writers[split].histogram(tag, values, step, bins)

    def image(self, split, step, tag, image_hwc_uint8):
        if self.enabled:
            self.writers[split].image(tag, image_hwc_uint8, step)

    def flush(self):
        for w in self.writers.values():
            w.flush()

    def close(self):
        for w in self.writers.values():
            w.close()
        if self.jsonl:
            self.jsonl.close()
        self.writers, self.jsonl = {}, None
