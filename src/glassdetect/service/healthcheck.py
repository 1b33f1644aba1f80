"""``python -m glassdetect.service.healthcheck [URL]``: exit 0 when the service is ready, 1 when not.

The container's ``HEALTHCHECK`` (no curl in a slim image; the standard library only, so it costs a
few milliseconds and no torch import). ``URL`` defaults to ``http://127.0.0.1:$PORT/readyz``
(``PORT``: 8000). An access token is not needed: ``/readyz`` stays open.
"""
from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request


def check(url: str, timeout_s: float = 3.0) -> tuple[bool, str]:
    """(ready, what the service said, or why it could not be asked)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as res:  # noqa: S310 - a URL the operator gives
            return res.status == 200, res.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return False, exc.read(2000).decode(errors="replace") or f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"{url}: {getattr(exc, 'reason', exc)}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/readyz"
    ok, said = check(url)
    try:
        said = json.dumps(json.loads(said))
    except ValueError:
        pass
    print(("ready: " if ok else "not ready: ") + said, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
