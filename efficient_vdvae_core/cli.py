"""Command-line plumbing shared by the entry points: common arguments and one-line user errors."""
import argparse
import inspect
import sys

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.synthesis.common import ENCODING_SPLITS


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

    A UserError (bad config, bad argument, missing run) becomes `error: <message>` on stderr and
    exit code 2, Ctrl-C becomes exit code 130, both without a traceback; other exceptions propagate.
    `parser` defaults to `build_parser` with the first line of main's docstring as description.
    """
    if parser is None:
        doc = inspect.getdoc(main)
        parser = build_parser(doc.splitlines()[0] if doc else None)
    try:
        return main(parser.parse_args(argv))
    except UserError as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
