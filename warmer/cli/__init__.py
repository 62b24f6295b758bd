"""`nnunet-warmer`: a list of commands, each a module of its own that holds its flags and its output; the work is
done by the stage modules they call. Flags follow nnU-Net's (-d -c -p -tr).

A new command is a module with `register(subparsers)` and `run(args) -> exit code`, added to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import platform
import sys
import warnings

from warmer import __version__
from warmer.cli import check, demo, env, export, gc, import_, ls, run, stats, status, submit, warm, watch
from warmer.cli import list as list_command
from warmer.cli.options import stderr
from warmer.errors import UserError, WarmError
from warmer.values.compat import installed_version

COMMANDS = (list_command, warm, status, env, run, check, ls, gc, export, import_, submit, watch, stats, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-warmer",
        description="Precompile the graphs nnU-Net v2 hands to torch.compile into a shared cache, prove from a "
                    "fresh process that they hit, and start training warm.")
    parser.add_argument("--version", action=VersionAction,
                        help="print the versions of nnunet-warmer, Python, torch and nnunetv2, and exit")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


class VersionAction(argparse.Action):
    """`--version`: ours and the versions the cache keys depend on most, looked up only when asked for (every
    command builds this parser, a scheduler's `status` gate included)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:  # noqa: A002
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"nnunet-warmer {__version__} (Python {platform.python_version()}, torch "
              f"{installed_version('torch')}, nnunetv2 {installed_version('nnunetv2')})")
        parser.exit()


def entry() -> None:
    """The installed `nnunet-warmer` command: `main`, then exit without unloading nnU-Net and torch (a second
    of teardown per call, a scheduler's `status` gate included); what the command wrote is closed by then."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError):
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Parse, run the command, and turn the errors a user can meet into one line and an exit code."""
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    try:
        return int(args.func(args))
    except UserError as e:
        stderr(f"nnunet-warmer: error: {e}")
        return 2
    except WarmError as e:
        stderr(f"nnunet-warmer: failed: {e}")
        return 1
    except KeyboardInterrupt:
        stderr("nnunet-warmer: interrupted")
        return 130
    except BrokenPipeError:  # `nnunet-warmer list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        stderr(f"nnunet-warmer: error: {e.strerror}{where}; the partial write was removed: free space on "
               f"that file system (or raise the quota) or pass another --cache-dir")
        return 2
