"""`python -m distill.search`, the documented command and import path (the code is `distill.retrieval.search`).

The arguments are parsed before `distill.retrieval.search` (and torch) loads, so `--help` answers at once; its
names (main, search) are read from there on first use.
"""

import sys

from distill.core.commands import command_parser


def __getattr__(name: str):
    from distill.retrieval import search

    return getattr(search, name)


if __name__ == "__main__":
    command_parser("search").parse_args()  # --help, --version and usage errors before torch loads
    from distill.retrieval.search import main

    sys.exit(main())
