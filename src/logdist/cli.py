"""The ``logdist`` command line: one sub-command per role."""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> (module, one-line help). Each module defines ``add_arguments(parser)`` and ``main(args) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("logdist.distributor", "run the distributor until SIGINT/SIGTERM"),
    "analyzer": ("logdist.analyzer.server", "run the reference analyzer (a real server that counts and acks)"),
    "emit": ("logdist.emitter.loadgen", "generate load: send stamped, checksummed messages to a distributor"),
    "bench": ("logdist.bench.runner", "benchmark distributor + analyzers + emitters as separate processes"),
    "demo": ("logdist.bench.demo", "~30 s local demo: weights, an analyzer failing and returning, a summary"),
    "chaos": ("logdist.chaos.cli", "a fault-injecting TCP proxy (latency, bandwidth, resets, partitions, ...)"),
    "pool": ("logdist.pool.cli", "run and autoscale a pool of local analyzer processes behind a distributor"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered.

    With ``only``, just that sub-command's module is imported (the others are listed by name and help), so
    one role's imports cannot break, or slow down, the start of another.
    """
    parser = argparse.ArgumentParser(
        prog="logdist",
        description="logdist routes every log message to exactly one analyzer, in proportion to weights.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``logdist`` console script."""
    words = sys.argv[1:] if argv is None else argv
    command = next((w for w in words if not w.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    return int(args._module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
