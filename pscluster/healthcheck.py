"""``python -m pscluster.healthcheck``: exit 0 when this container's service answers /healthz.

The image's HEALTHCHECK runs it (python:3.11-slim has no curl). It asks the service the
container runs, on the port its settings name (``PSC_PORT``), or at a URL given as argument.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Sequence

from pscluster.settings import ENV_PREFIX
from pscluster.settings.timeouts import HEALTHCHECK_TIMEOUT_S


def local_url(environ: dict[str, str] | None = None) -> str:
    environ = dict(os.environ) if environ is None else environ
    host = environ.get(f"{ENV_PREFIX}HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = environ.get(f"{ENV_PREFIX}PORT") or "0"
    if port == "0":
        raise SystemExit(f"healthcheck: {ENV_PREFIX}PORT is unset or 0; no port to ask")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    url = (argv[0] if argv else local_url()).rstrip("/")
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=HEALTHCHECK_TIMEOUT_S) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {url}/healthz: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
