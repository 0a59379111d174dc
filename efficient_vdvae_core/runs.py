"""Run folders, atomic file writes, and choosing the config of a run (new or resumed).

A run is named by `[run] name` and lives in two folders of the working directory:
`logs-<name>/` (the saved config `hparams-<name>.cfg`, TensorBoard events, synthesis images,
latents) and `checkpoints-<name>/`. The saved config is the run's identity: once it exists, it is
what the run uses, whatever the file given on the command line says: only the [run] name is taken
from that file, and `--set` values apply on top of the saved copy without changing it.
A training run holds `logs-<name>/.lock` (see `RunLock`) so that a second training of the same run
refuses to start instead of writing into the same folders.
"""
import errno
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from efficient_vdvae_core.config import (ConfigError, build_config, differing_keys, parse_override,
                                         parse_raw_text, read_raw, run_name_problem, with_overrides)
from efficient_vdvae_core.errors import UserError

MODES = ("train", "inference")


@dataclass(frozen=True)
class RunPaths:
    """Every folder and file of one run."""
    workdir: Path
    logs: Path  # workdir/logs-<name>
    checkpoints: Path  # workdir/checkpoints-<name>, a folder of numbered checkpoints
    saved_config: Path  # logs/hparams-<name>.cfg
    train_events: Path  # logs/train (TensorBoard)
    val_events: Path  # logs/val (TensorBoard)
    synthesis_images: Path  # logs/synthesis-images
    latents: Path  # logs/latents (div_stats.npy, encodings)


def run_paths(run_name, workdir="."):
    """The RunPaths of run `run_name` under `workdir` (nothing is created)."""
    problem = run_name_problem(run_name)
    if problem:
        raise UserError(f"invalid run name {repr(run_name)[:80]}: {problem}")
    workdir = Path(workdir)
    logs = workdir / f"logs-{run_name}"
    return RunPaths(
        workdir=workdir,
        logs=logs,
        checkpoints=workdir / f"checkpoints-{run_name}",
        saved_config=logs / f"hparams-{run_name}.cfg",
        train_events=logs / "train",
        val_events=logs / "val",
        synthesis_images=logs / "synthesis-images",
        latents=logs / "latents",
    )


def atomic_write_bytes(path, data):
    """Write `data` to `path` through a temporary file in the same folder and a rename.

    Readers see either the old file or the complete new one; if anything fails, the temporary
    file is removed and the old file is left untouched. A replaced file keeps its permissions; a
    new one gets the usual permissions under the process umask.
    """
    path = Path(path)
    old_mode = path.stat().st_mode & 0o7777 if path.exists() else None
    tmp, fd = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if old_mode is not None:
            os.chmod(tmp, old_mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def _create_temporary(path):
    """Create and open a new hidden file next to `path`; returns (its path, a write-only descriptor)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return tmp, os.open(tmp, flags, 0o666)  # the umask applies, as for a plain open()
        except FileExistsError:
            continue


def atomic_write_text(path, text):
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(folder):
    """Make a rename in `folder` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RunLock:
    """An exclusive lock on one run: `logs-<name>/.lock`, held with flock(2) on an open descriptor.

    The kernel releases the lock when the holding process ends, however it ends (SIGKILL, OOM killer,
    node reboot), so a lock left by a dead process never blocks the next start; the file's content,
    `<pid>@<host>`, only names the holder in the refusal message. A clean release deletes the file, and
    the logs folder too when acquiring created it and it is still empty, so a run refused before writing
    anything leaves nothing behind. Works where flock works (local disks, NFSv4); Linux and macOS.
    A forked child (e.g. a DataLoader worker) closes its copy of the descriptor at once, so the lock
    dies with the process that took it, not with its last child.

        with RunLock(paths.logs):
            ...  # only one process trains this run here
    """

    NAME = ".lock"
    MAX_TRIES = 1000  # rounds of open + flock lost to processes releasing the lock at that moment

    def __init__(self, logs_folder, log=print):
        self.folder = Path(logs_folder)
        self.path = self.folder / self.NAME
        self.log = log
        self.fd = None
        self._created_folder = False

    def acquire(self):
        """Take the lock, or raise UserError naming the lock file and the process that holds it.

        Where the file system has no locks (ENOLCK, e.g. NFS mounted with nolock), warn and go on unlocked.
        """
        import fcntl  # POSIX only: imported here so that the module loads everywhere
        for _ in range(self.MAX_TRIES):
            try:
                self._created_folder = self._created_folder or not self.folder.is_dir()
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:
                continue  # the folder was removed by a process releasing the lock: make it again
            except OSError as exc:
                raise UserError(f"{self.path}: cannot create the run's lock file ({exc.strerror}); "
                                "check --workdir") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise UserError(f"{self.path}: the run is in use by process {holder}; wait for it to end or "
                                    "stop it (a lock left by a process that died is released automatically)") from None
                self.log(f"warning: {self.path}: cannot lock it ({exc.strerror}); nothing stops a second training "
                         "of this run in this folder")
            if _same_file(fd, self.path):
                self.fd = fd
                _HELD_LOCKS.add(fd)
                break
            os.close(fd)  # released and deleted by its holder between our open and flock: lock the new file
        else:
            raise UserError(f"{self.path}: could not take the lock in {self.MAX_TRIES} tries; try again")
        try:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"{os.getpid()}@{socket.gethostname()}\n".encode())
        except OSError:
            pass  # the holder's name is only for the message of a refused start
        return self

    def release(self):
        """Delete the lock file (and the logs folder if this lock created it and it is empty), then unlock."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
            if self._created_folder:
                try:
                    self.folder.rmdir()
                except OSError:
                    pass  # not empty: the run wrote something
        finally:
            _HELD_LOCKS.discard(self.fd)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


_HELD_LOCKS = set()  # descriptors of the RunLocks this process holds


def _close_held_locks_in_child():
    """After a fork, in the child: close the inherited lock descriptors (the parent keeps the lock)."""
    for fd in list(_HELD_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_locks_in_child)


def _read_holder(fd):
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    if not text:
        return "(unknown PID: it is starting)"
    pid, _, host = text.partition("@")
    return f"{pid} on host {host}" if host else pid


def _same_file(fd, path):
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def resolve_run_config(config_path, overrides=(), workdir=".", mode="train", log=print, check=None, verbose=False):
    """The Config and RunPaths of the run selected by `config_path` and `--set` overrides.

    The given file (with the overrides) is fully validated first and names the run. If the run's
    saved copy logs-<name>/hparams-<name>.cfg exists, the run resumes: the saved copy is loaded
    instead, the overrides are applied on top of it (not written back), and the keys of the given
    file that it ignores are logged. Otherwise mode "train" saves the given file, with the
    overrides written into it, as the run's copy; mode "inference" writes nothing and raises
    UserError. Raises ConfigError (a UserError) for a malformed given file or saved copy.
    `check(config, paths)`, if given, runs on the chosen config before anything is written (e.g. it
    opens the datasets), so that a run refused by it leaves no saved copy behind.
    """
    if mode not in MODES:
        raise ValueError(f"resolve_run_config: mode must be one of {MODES}, got {mode!r}")
    overrides = list(overrides)
    given_raw = with_overrides(read_raw(config_path), overrides)
    given = build_config(given_raw)
    name = given.run.name
    paths = run_paths(name, workdir)

    if paths.saved_config.is_file():
        saved_raw = with_overrides(read_raw(paths.saved_config), overrides)
        config = build_config(saved_raw)
        if config.run.name != name:
            raise ConfigError(f"{paths.saved_config}: [run] name = {config.run.name} does not match its run "
                              f"folder {paths.logs.name}; set name = {name} in that file")
        log(f"Found existing {paths.saved_config}: resuming run '{name}' with its saved config.")
        ignored = differing_keys(given, config)
        if ignored and verbose:
            log(f"Ignored keys of {config_path} that differ from the saved config: {', '.join(ignored)}")
        elif ignored:
            log(f"Ignored {len(ignored)} key(s) of {config_path} that differ from the saved config "
                f"(--verbose lists them; --set section.key=value changes a value of this run)")
        if overrides:
            applied = ", ".join(_override_label(text) for text in overrides)
            log(f"Applied on top of the saved config (not written to it): {applied}")
        if check is not None:
            check(config, paths)
        return config, paths

    if mode == "inference":
        raise UserError(f"no run named '{name}' in {os.path.abspath(paths.workdir)} (expected "
                        f"{paths.saved_config}); train it first, or pass --config/--set run.name=... "
                        "for an existing run")
    if build_config(parse_raw_text(given_raw.text, f"{config_path} as it would be saved")) != given:
        raise AssertionError(f"the text to save as {paths.saved_config} does not read back to the same config")
    if check is not None:
        check(given, paths)
    try:
        paths.logs.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths.saved_config, given_raw.text)
    except OSError as exc:
        raise UserError(f"{exc.filename or paths.saved_config}: cannot save the run's config ({exc.strerror}); "
                        "check --workdir and the free disk space") from None
    log(f"No existing config found. New run config saved in {paths.saved_config}")
    return given, paths


def _override_label(text):
    section, key, value = parse_override(text)
    return f"{section}.{key}={value}"
