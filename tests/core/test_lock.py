"""RunLock: one training process per run folder; a dead holder never blocks; a refusal writes nothing."""
import errno
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.runs import RunLock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock(2)")


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hold_in_subprocess(folder):
    """A Python process that takes RunLock(folder), says 'held' and sleeps; returns the Popen."""
    code = textwrap.dedent(f"""
        import sys, time
        from efficient_vdvae_core.runs import RunLock
        lock = RunLock({str(folder)!r}).acquire()
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_names_its_holder_and_release_leaves_nothing(tmp_path):
    folder = tmp_path / "logs-run"
    with RunLock(folder) as lock:
        assert lock.path == folder / ".lock"
        assert lock.path.read_text() == f"{os.getpid()}@{socket.gethostname()}\n"
    assert not folder.exists()  # created by the lock, empty again: removed


def test_release_keeps_a_folder_with_files(tmp_path):
    folder = tmp_path / "logs-run"
    with RunLock(folder):
        (folder / "hparams-run.cfg").write_text("x")
    assert sorted(p.name for p in folder.iterdir()) == ["hparams-run.cfg"]


def test_a_second_holder_is_refused_with_the_path_and_pid_and_writes_nothing(tmp_path):
    folder = tmp_path / "logs-run"
    folder.mkdir()
    (folder / "hparams-run.cfg").write_text("saved")
    with RunLock(folder):
        before = snapshot(tmp_path)
        with pytest.raises(UserError) as info:
            RunLock(folder).acquire()  # another open file description: flock refuses it, even in this process
        assert snapshot(tmp_path) == before
    message = str(info.value)
    assert str(folder / ".lock") in message and f"process {os.getpid()} on host {socket.gethostname()}" in message
    assert "\n" not in message
    assert (folder / "hparams-run.cfg").read_text() == "saved" and not (folder / ".lock").exists()


def test_another_process_holds_it_until_it_is_killed(tmp_path):
    folder = tmp_path / "logs-run"
    holder = hold_in_subprocess(folder)
    try:
        with pytest.raises(UserError, match=f"in use by process {holder.pid} "):
            RunLock(folder).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (folder / ".lock").read_text().startswith(f"{holder.pid}@")  # the dead holder's file is still there...
    with RunLock(folder) as lock:  # ... and does not block
        assert lock.path.read_text().startswith(f"{os.getpid()}@")


def _count_under_lock(folder, rounds, results):
    """Take the lock `rounds` times (retrying while held), each time checking that nobody else is inside."""
    done = 0
    while done < rounds:
        try:
            lock = RunLock(folder).acquire()
        except UserError:
            continue
        try:
            inside = folder / "inside"
            fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holder is inside
            os.close(fd)
            time.sleep(0.0005)
            os.unlink(inside)
            done += 1
        finally:
            lock.release()
    results.put(done)


def test_processes_racing_for_the_lock_never_hold_it_together(tmp_path):
    """Releases delete the file while others open it: the inode check keeps the lock exclusive."""
    folder = tmp_path / "logs-run"
    ctx = multiprocessing.get_context("fork") if sys.platform != "darwin" else multiprocessing.get_context()
    results = ctx.Queue()
    procs = [ctx.Process(target=_count_under_lock, args=(folder, 150, results)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sorted(results.get(timeout=5) for _ in procs) == [150, 150, 150]


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lines = []
    with RunLock(tmp_path / "logs-run", log=lines.append) as lock:
        assert lock.path.read_text().startswith(f"{os.getpid()}@")
    assert lines == [f"warning: {tmp_path / 'logs-run' / '.lock'}: cannot lock it (No locks available); nothing "
                     "stops a second training of this run in this folder"]


def test_the_lock_dies_with_its_holder_not_with_its_forked_children(tmp_path):
    """A holder whose forked child (like a DataLoader worker) lives on: SIGKILL the holder, the lock is free at once."""
    folder = tmp_path / "logs-run"
    code = textwrap.dedent(f"""
        import os, sys, time
        from efficient_vdvae_core.runs import RunLock
        lock = RunLock({str(folder)!r}).acquire()
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        print("held", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with RunLock(folder) as lock:  # the child still runs, but holds no copy of the lock
            assert lock.fd is not None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
