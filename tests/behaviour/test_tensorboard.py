"""TensorBoard event files of real tiny runs (train.py) in both frameworks: the same tags, a superset of the
original's (tests/data/original_tensorboard_tags.txt), histograms and images on both writers, new tags in
namespaces of their own, and no event file from an invocation that has nothing to do."""
import shutil
from pathlib import Path

import pytest

from tests.behaviour.conftest import same_in_both, train_here

N_LAYERS = 6  # latent layers of egs/tiny.cfg
ORIGINAL_TAGS = Path(__file__).parents[1] / "data" / "original_tensorboard_tags.txt"
NEW_NAMESPACES = {"Training", "Time", "Images", "Gradients", "Quality"}  # of the tags the original did not write


def original_tags():
    """{(writer, kind): [tag or prefix/*, ...]} of the original, with <i> expanded to tiny's latent layers."""
    tags = {}
    for line in ORIGINAL_TAGS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            writer, kind, tag = line.split()
            names = [tag.replace("<i>", str(i)) for i in range(N_LAYERS)] if "<i>" in tag else [tag]
            tags.setdefault((writer, kind), []).extend(names)
    return tags


def matches(tag, pattern):
    return tag.startswith(pattern[:-1]) if pattern.endswith("/*") else tag == pattern


@pytest.fixture(scope="session")
def event_tags(two_step_run):
    """(RunPaths, {(writer, kind): sorted tags}) of the 2-step run with an evaluation at each step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    paths = two_step_run
    found = {}
    for writer, folder in (("train", paths.train_events), ("val", paths.val_events)):
        tags = EventAccumulator(str(folder), size_guidance={"histograms": 0}).Reload().Tags()
        for kind in ("scalars", "histograms", "images"):
            found[writer, kind] = sorted(tags[kind])
    return paths, found


def test_the_same_tags_in_both_frameworks_and_every_tag_of_the_original(framework, event_tags, across):
    _, found = event_tags
    for (writer, kind), patterns in original_tags().items():
        for pattern in patterns:
            assert any(matches(tag, pattern) for tag in found[writer, kind]), f"{writer} {kind}: no {pattern}"
    same_in_both(across, "TensorBoard tags of a run", framework, found)


def test_histograms_of_weights_gradients_and_outputs_and_images_on_both_writers(event_tags):
    _, found = event_tags
    for writer in ("train", "val"):
        assert {"Distributions/target", "Distributions/output"} <= set(found[writer, "histograms"])
        assert {"Images/Original", "Images/Generated"} <= set(found[writer, "images"])
    train = found["train", "histograms"]
    weights = {t.split("/", 1)[1] for t in train if t.startswith("Weights/")}
    gradients = {t.split("/", 1)[1] for t in train if t.startswith("Gradients/")}
    assert len(weights) > 3 and weights == gradients  # per module, both
    assert "Images/Prior_samples" in found["val", "images"]


def test_new_tags_live_in_namespaces_of_their_own(event_tags):
    _, found = event_tags
    original = original_tags()
    for (writer, kind), tags in found.items():
        new = [t for t in tags if not any(matches(t, p) for p in original.get((writer, kind), []))]
        for tag in new:
            assert "/" in tag and tag.split("/")[0] in NEW_NAMESPACES, f"{writer} {kind}: {tag}"


def test_a_run_with_nothing_to_do_writes_no_event_file(framework, event_tags, tmp_path, capsys):
    """Re-running a finished run: the message says how to extend it, and logs-<name>/ is unchanged."""
    source, _ = event_tags
    for folder in (source.logs, source.checkpoints):
        shutil.copytree(folder, tmp_path / folder.name)
    logs = tmp_path / source.logs.name
    before = {p.relative_to(logs): p.read_bytes() for p in logs.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    train_here(framework, tmp_path, 2)
    out = capsys.readouterr().out
    assert "already finished (2 of 2 steps); nothing to do. To train it further, run the same command with --set " \
           "train.total_train_steps=N (N > 2)" in out
    after = {p.relative_to(logs): p.read_bytes() for p in logs.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    assert all(p.stat().st_size > 0 for p in logs.glob("*/events.out.tfevents.*"))
