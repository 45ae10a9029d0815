"""The bank service of the real-process tests: ``cutwatch.demo.bank``, run as a script (see there)."""

from __future__ import annotations

import sys

from cutwatch.demo.bank import main

if __name__ == "__main__":
    sys.exit(main())
