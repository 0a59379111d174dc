"""Every file of a dataset folder checked when the dataset is opened, from its header and end, not decoded.

A file is bad when it is a broken symlink, not a regular file, unreadable, 0 bytes long, or fails the
check of its kind: for images, a name Pillow does not open, a format not recognised from the header, a
size or pixel mode `decode.header_problem` refuses, or a PNG without its end chunk (truncated); for
ImageNet .npz batches, the check of `sources.npz_problem`. `[data] bad_files = 'refuse'` (the default)
refuses the dataset with one line naming the first bad files and their count; 'skip' leaves them out
(reported once per process on stderr), so the split is the sorted good files, deterministic given the
folder. Verdicts are remembered per process by (path, size, mtime, inode), so re-opening a dataset (train
and val splits, loaders) costs one stat per file; a folder with a complete decoded cache (`cache`) of
exactly its current files is not checked again, since every file was decoded to build it. Files that pass
and still fail to decode when read (damage inside the data) are handled by the dataset
(`dataset.ImageDataset.raw`).
"""
import functools
import os
import stat
import sys
import warnings

from PIL import Image

from efficient_vdvae_core.data.decode import MAX_PIXELS, exception_reason, header_problem
from efficient_vdvae_core.errors import UserError

BAD_FILE_POLICIES = ("refuse", "skip")
NAMED = 3  # bad files named in a message; the rest are counted
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every PNG ends with
END_WINDOW = 1024  # bytes at the end of a PNG searched for IEND (tolerates a little trailing data)

_verdicts = {}  # (path, size, mtime_ns, inode, kind) -> problem (str) or None
_reported = set()


class FilesFailedToLoad(Exception):
    """Files that passed the checks and failed when decoded: `bad` is {name: reason}."""

    def __init__(self, bad):
        super().__init__(f"{len(bad)} files failed to load")
        self.bad = bad


def stat_problem(path):
    """(os.stat_result, None), or (None, why `path` is not a non-empty regular file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, "broken symlink" if os.path.islink(path) else "missing"
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    if st.st_size == 0:
        return None, "0 bytes"
    return st, None


@functools.lru_cache(maxsize=1)
def image_extensions():
    """File extensions (lower case, with the dot) that Pillow can open."""
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def image_file_problem(path, size):
    """Why the image file at `path` (`size` bytes) cannot be used, or None; reads its header and end only."""
    if os.path.splitext(path)[1].lower() not in image_extensions():
        return "not an image file name"
    try:
        with open(path, "rb") as f:
            with warnings.catch_warnings():  # about corrupt metadata, or an image above MAX_PIXELS we refuse
                warnings.simplefilter("ignore")
                with Image.open(f) as image:
                    problem, image_format = header_problem(image), image.format
            if problem is None and image_format == "PNG":
                f.seek(max(0, size - END_WINDOW))
                if PNG_END not in f.read():
                    problem = "truncated: no PNG end chunk (IEND) at the end of the file"
    except PermissionError as exc:
        return f"cannot be read: {exc.strerror}"
    except Image.UnidentifiedImageError:
        return "not a readable image: format not recognised"
    except Image.DecompressionBombError:
        return f"more than the limit of {MAX_PIXELS} pixels"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return f"not a readable image: {exception_reason(exc)}"
    return problem


def bad_files(folder, names, kind, problem):
    """{name: problem} of the bad files among `names` (relative to `folder`), in order.

    `problem(path, size)` checks one regular non-empty file; `kind` names that check in the verdict memo.
    """
    bad = {}
    for name in names:
        path = os.path.join(folder, name)
        st, reason = stat_problem(path)
        if st is not None:
            key = (path, st.st_size, st.st_mtime_ns, st.st_ino, kind)
            if key not in _verdicts:
                _verdicts[key] = problem(path, st.st_size)
            reason = _verdicts[key]
        if reason:
            bad[name] = reason
    return bad


def _listing(bad):
    named = ", ".join(f"{name} ({reason})" for name, reason in list(bad.items())[:NAMED])
    return named + (f" and {len(bad) - NAMED} more" if len(bad) > NAMED else "")


def keep_good(names, bad, *, policy, key, raw, folder):
    """`names` without the `bad` ones under policy 'skip' (reported once), or a UserError listing them ('refuse').

    `key` and `raw` are the config key and its value (the folder as given), `folder` the absolute folder.
    """
    if not bad:
        return names
    if policy not in BAD_FILE_POLICIES:
        raise ValueError(f"policy must be one of {BAD_FILE_POLICIES}, got {policy!r}")
    files = "file" if len(bad) == 1 else "files"
    where = f"[data] {key} = '{raw}'" + ("" if str(raw) == str(folder) else f" ({folder})")
    if len(bad) == len(names):
        raise UserError(f"all {len(bad)} {files} in {where} are unreadable: {_listing(bad)}; "
                        "replace them or fix the path")
    if policy == "refuse":
        them = "it" if len(bad) == 1 else "them"
        raise UserError(f"{len(bad)} unreadable {files} in {where}: {_listing(bad)}; remove or replace {them}, "
                        f"or set [data] bad_files = 'skip' to leave {them} out")
    report = (where, tuple(bad))
    if report not in _reported:
        _reported.add(report)
        print(f"warning: [data] bad_files = 'skip': leaving out {len(bad)} unreadable {files} of {where}: "
              f"{_listing(bad)}", file=sys.stderr, flush=True)
    return [name for name in names if name not in bad]
