"""``python -m encoderguard``: the same as the ``encoderguard`` command."""

import sys

from encoderguard.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
