"""Command-line plumbing shared by the entry points: common arguments and one-line user errors."""
import argparse
import errno
import inspect
import os
import re
import signal
import sys

from efficient_vdvae_core.checkpoints import DISK_ERRNOS, os_error_reason
from efficient_vdvae_core.errors import EXIT_LOST_PROCESS, LostProcessError, UserError
from efficient_vdvae_core.synthesis.common import ENCODING_SPLITS
from efficient_vdvae_core.training.preemption import EXIT_INTERRUPTED

WRITE_ERRNOS = DISK_ERRNOS | {errno.EACCES, errno.EPERM}  # OSErrors reported in one line: the disk or permissions


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are UserErrors, so that run_main reports them in one line."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def build_tool_parser(description):
    """An argparse parser with one-line usage errors and no run options, for standalone tools."""
    return _OneLineParser(description=description)


def build_parser(description):
    """An argparse parser with --config, --set (repeatable) and --workdir."""
    parser = _OneLineParser(description=description)
    parser.add_argument("--config", metavar="PATH", default="hparams.cfg",
                        help="config file (default: hparams.cfg in the current directory); for an existing "
                             "run only its [run] name is used, the run's saved copy supplies the rest")
    parser.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="override one config value, e.g. --set train.batch_size=8; repeatable; applied "
                             "on top of the saved copy for an existing run, without changing it")
    parser.add_argument("--verbose", action="store_true",
                        help="list every key of --config that the saved config of an existing run overrides")
    parser.add_argument("--workdir", metavar="DIR", default=".",
                        help="folder that holds the run folders logs-<name>/ and checkpoints-<name>/ "
                             "(default: the current directory)")
    return parser


def build_synthesis_parser(description, checkpoint_help):
    """build_parser plus the options of synthesize.py in both frameworks."""
    parser = build_parser(description)
    parser.add_argument("--checkpoint", metavar="PATH", default=None, help=checkpoint_help)
    parser.add_argument("--split", choices=ENCODING_SPLITS, default="train",
                        help="encoding: the split to encode (default: train, as the original)")
    parser.add_argument("--encodings", metavar="PATH", default=None,
                        help="decoding: the encodings folder (default: logs-<name>/latents/encodings_seed_<seed>)")
    parser.add_argument("--sample-temperature", metavar="T", type=float, default=0.0,
                        help="decoding: z = mean + T * std * eps for the kept variates (default 0: posterior means)")
    parser.add_argument("--allow-other-model", action="store_true",
                        help="decoding: accept encodings written by another model (config or weights differ)")
    parser.add_argument("--max-images", metavar="N", type=int, default=None,
                        help="every mode but generation and sample_quality: only the first N images")
    return parser


def run_main(main, argv=None, parser=None):
    """Parse `argv` (default sys.argv[1:]) and return `main(args)`.

    A UserError (bad config, bad argument, missing run) becomes `error: <message>` on stderr and exit
    code 2, and so does an OSError of the disk or of permissions (a full disk, a read-only folder);
    Ctrl-C becomes exit code 130, a closed stdout (`... | head`) a silent exit code 141, all without a
    traceback; other exceptions propagate. A LostProcessError (another process of the job stopped) is
    `error: <message>` in every process, exit code 75 (EX_TEMPFAIL: running it again resumes). Processes other than the first of a multi-process job
    (torchrun's RANK, JAX_PROCESS_ID, SLURM_PROCID...) exit with the same codes without printing the line,
    which the first process prints. `parser` defaults to `build_parser` with the first line of main's
    docstring as description.
    """
    if parser is None:
        doc = inspect.getdoc(main)
        parser = build_parser(doc.splitlines()[0] if doc else None)
    try:
        return main(parser.parse_args(argv))
    except UserError as exc:
        message, code = user_message(exc), 2
    except LostProcessError as exc:  # every process left says it: each node has its own log
        print(f"error: {exc}", file=sys.stderr)
        message, code = None, EXIT_LOST_PROCESS
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            message, code = None, EXIT_BROKEN_PIPE
            _silence_stdout()
        elif exc.errno in WRITE_ERRNOS:
            message, code = f"{exc.filename + ': ' if exc.filename else ''}{os_error_reason(exc)}; check the " \
                            "folder's permissions and free space, then run the same command again", 2
        else:
            raise
    except KeyboardInterrupt:
        message, code = "interrupted", EXIT_INTERRUPTED
    # here, outside the except clauses: no exception (nor its frames, e.g. of a data loader) outlives the exit
    if message is not None and not is_secondary_process():
        print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # the code of a process killed by SIGPIPE, as `yes | head` gives
PROCESS_INDEX_VARIABLES = ("RANK", "JAX_PROCESS_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")


def is_secondary_process():
    """True in a process of a multi-process job other than the first (by the launcher's environment)."""
    return any(os.environ.get(name, "0").strip() not in ("", "0") for name in PROCESS_INDEX_VARIABLES)


def user_message(exc):
    """The message of a UserError on one line; for one raised in a torch DataLoader worker, the original message
    without the worker's traceback that torch puts around it."""
    text = str(exc)
    if text.startswith("Caught ") and "\nOriginal Traceback (most recent call last):" in text:
        lines = text.splitlines()
        last_frame = max(i for i, line in enumerate(lines) if line.startswith("  "))
        text = "\n".join(lines[last_frame + 1:])
        text = re.sub(rf"^[\w.]*{re.escape(type(exc).__name__)}: ", "", text)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _silence_stdout():
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
