"""`python -m distill.index`, the documented command (the code is `distill.retrieval.index`)."""

import sys

from distill.retrieval.index import build_index, main, read_index  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
