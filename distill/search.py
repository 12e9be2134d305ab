"""`python -m distill.search`, the documented command (the code is `distill.retrieval.search`)."""

import sys

from distill.retrieval.search import main, search  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
