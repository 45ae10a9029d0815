"""The shop service of the deadlock tests: ``cutwatch.demo.shop``, run as a script (see there)."""

from __future__ import annotations

import sys

from cutwatch.demo.shop import main

if __name__ == "__main__":
    sys.exit(main())
