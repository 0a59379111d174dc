"""Stopping a training run cleanly on SIGTERM (what SLURM, Kubernetes and spot instances send) or Ctrl-C.

SIGTERM, or a first SIGINT, only raises a flag: the loop finishes the step it is in, every process agrees
on the stop step (an all-reduce of the flags, so all ranks of a torchrun or JAX job stop at the same
step), writes a checkpoint of that step (unless it has just written one), releases the run's lock and
exits with EXIT_PREEMPTED (143 = 128 + SIGTERM) or EXIT_INTERRUPTED (130) after one line saying where
to resume. A second SIGINT aborts at once (KeyboardInterrupt: exit code 130, no checkpoint).
"""
import signal

EXIT_PREEMPTED = 128 + signal.SIGTERM
EXIT_INTERRUPTED = 128 + signal.SIGINT


class StopRun(SystemExit):
    """Raised by the loop after a clean stop on a signal; its code is the process's exit code."""


class StopRequests:
    """Installs the handlers of SIGTERM and SIGINT for the life of a `with` block; `signal` is the first received."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self.signal is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        if self.signal is None:
            self.signal = signum

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread (e.g. a test runner's thread): signals stay as they are
                pass
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @property
    def requested(self):
        return self.signal is not None

    def exit_code(self, agreed_signal=None):
        signum = self.signal if agreed_signal is None else agreed_signal
        return EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED


def signal_name(signum):
    return signal.Signals(signum).name if signum else "a signal of another process"
