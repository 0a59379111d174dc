"""torchrun for train.sh: the same launcher and options, ending with the training processes' own exit code.

    python -m efficient_vdvae_torch.launch [torchrun options] train.py [train.py arguments]

A run that the training processes end themselves ends the launcher quietly with their code: 2 for a
refused input (process 0 has printed the one line), 75 when another node of the job was lost (each process
left has printed one line; so does the launcher when the lost node hosted the rendezvous), 143 / 130 for a clean stop on SIGTERM / Ctrl-C (after
the checkpoint). torchrun would add its failure report (a traceback, a table of the processes and its
shutdown log lines) and exit with 1. Any other failure keeps torchrun's report and exit code.

Signals: SIGTERM is forwarded by torchrun (the processes stop cleanly within its shutdown timeout,
TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s by default). A first Ctrl-C is forwarded as SIGTERM, so that the
processes, which get the terminal's SIGINT themselves, do not see it twice (a second Ctrl-C aborts).
"""
import logging
import signal
import sys

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous.api import RendezvousError

from efficient_vdvae_core.errors import EXIT_LOST_PROCESS

EXIT_REFUSED = 2
QUIET_EXITS = {EXIT_REFUSED, EXIT_LOST_PROCESS, 128 + signal.SIGTERM, 128 + signal.SIGINT}  # the processes said why
SHUTDOWN_MESSAGES = ("Sending process", "failed (exitcode", "Received ", "closing signal", "failed to shutdown the rendezvous")  # torchrun's log lines


class _HeldShutdownLog(logging.Filter):
    """Holds torchrun's log lines about stopping the processes until it is known whether they should be shown."""

    def __init__(self):
        super().__init__()
        self.held = []

    def filter(self, record):
        if record.levelno >= logging.WARNING and any(m in record.getMessage() for m in SHUTDOWN_MESSAGES):
            self.held.append(record)
            return False
        return True


def _elastic_handlers():
    """The handlers that print torchrun's log records (torch's own, on the 'torch.distributed' logger)."""
    return logging.getLogger("torch.distributed").handlers or logging.getLogger().handlers


def _first_interrupt(state):
    def handler(signum, frame):
        if state["interrupted"]:
            return  # the second Ctrl-C reaches the processes from the terminal and aborts them
        state["interrupted"] = True
        raise SignalException("Ctrl-C: stopping the training processes", sigval=signal.SIGTERM)
    return handler


def main(argv=None):
    """Run torchrun with `argv` (default: sys.argv[1:]); exit with the training processes' code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    hold = _HeldShutdownLog()
    handlers = _elastic_handlers()
    for handler in handlers:
        handler.addFilter(hold)
    state = {"interrupted": False}
    signal.signal(signal.SIGINT, _first_interrupt(state))
    code = None
    try:
        torchrun.main(["--signals-to-handle=SIGTERM,SIGHUP,SIGQUIT", *argv])  # SIGINT is ours
        code = 0
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode not in QUIET_EXITS:
            raise
        code = failure.exitcode
        first = exc.failures.get(0)
        if code == EXIT_REFUSED and (first is None or first.exitcode != EXIT_REFUSED):  # process 0 said nothing
            print(f"error: training process {rank} refused to start (exit code 2) and the others were stopped; "
                  "run train.py in one process to see why", file=sys.stderr)
    except RendezvousError as exc:  # the node that hosts the rendezvous stopped: this node's processes are ended
        print(f"error: lost the rendezvous of the job ({type(exc).__name__}): the node that hosts it stopped; "
              "run the same command on every node to resume from the last checkpoint", file=sys.stderr)
        code = EXIT_LOST_PROCESS
    except SignalException as exc:
        code = 128 + (signal.SIGINT if state["interrupted"] else exc.sigval)
    finally:
        if code is None:
            _release(hold, handlers)
    raise SystemExit(code)


def _release(hold, handlers):
    for handler in handlers:
        handler.removeFilter(hold)
        for record in hold.held:
            handler.handle(record)
    hold.held = []


if __name__ == "__main__":
    main()
