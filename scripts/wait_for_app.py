"""Wait until a Streamlit app answers its health check: `python scripts/wait_for_app.py URL [--timeout S]`."""
from __future__ import annotations

import argparse
import sys
import time
import urllib.request


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("url", help="the app's base URL, e.g. http://localhost:8501")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")
    a = ap.parse_args()
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(a.url.rstrip("/") + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return 0
        except OSError:
            pass
        time.sleep(0.5)
    print(f"the app did not answer at {a.url} within {a.timeout:.0f} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
