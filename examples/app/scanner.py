"""Client for the (pretend) malware-scanning service every upload goes through.

The real service is an HTTP API answering in a few hundred milliseconds; this stand-in
sleeps instead, blocking its caller exactly as a ``requests.post(...)`` call would.
"""

from __future__ import annotations

import time

SCAN_LATENCY = 0.4  # seconds: how long the scanning service takes to answer

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def scan(data: bytes) -> bool:
    """True when ``data`` is clean. Blocks the calling thread while the scanner works."""
    time.sleep(SCAN_LATENCY)  # stands in for requests.post(SCANNER_URL, data=data)
    return EICAR not in data
