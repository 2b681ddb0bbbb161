"""``python -m rayq``: the ``rayq`` command line (same as the ``rayq`` script)."""

import sys

from rayq.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
