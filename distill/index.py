"""`python -m distill.index`, the documented command and import path (the code is `distill.retrieval.index`).

The arguments are parsed before `distill.retrieval.index` (and torch) loads, so `--help` answers at once; its
names (build_index, main, read_index) are read from there on first use.
"""

import sys

from distill.core.commands import command_parser


def __getattr__(name: str):
    from distill.retrieval import index

    return getattr(index, name)


if __name__ == "__main__":
    command_parser("index").parse_args()  # --help, --version and usage errors before torch loads
    from distill.retrieval.index import main

    sys.exit(main())
