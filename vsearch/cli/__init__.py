"""The `vsearch` command line: a thin layer over the library that talks to people.

Every subcommand maps to one library function; errors from the library become one clean line
on stderr and exit code 1 (2 for usage errors), never a traceback. The folder holds the parser
(`parser`), the retrieval-quality switches several commands share (`options`), the commands that
make and keep an index (`index_commands`: build, check, gc, tune), those that use one
(`query_commands`: search, eval, serve, feedback) and `vsearch info` (`info`).
"""

from __future__ import annotations

import sys

from vsearch.cli.parser import build_parser
from vsearch.errors import VsearchError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VsearchError as e:
        print(f"vsearch: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vsearch: interrupted", file=sys.stderr)
        return 130
