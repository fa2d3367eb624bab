"""``python -m fusejit.testing.fuzz``: the fuzzer's command line (``driver.main``)."""

import sys

from fusejit.testing.fuzz.driver import main

if __name__ == "__main__":
    sys.exit(main())
