"""The stream bank of the real-process tests: ``cutwatch.demo.stream_bank``, run as a script (see there)."""

from __future__ import annotations

import sys

from cutwatch.demo.stream_bank import main

if __name__ == "__main__":
    sys.exit(main())
