"""`python -m data.prepare ...` (same as the `rankseg-prepare` command): prepares a dataset.

The implementation lives in `rankseg_jax/data/prepare.py` so that it ships with the package.
"""

import sys

from rankseg_jax.data.prepare import main, prepare  # noqa: F401  (public entry points)

if __name__ == "__main__":
    sys.exit(main())
