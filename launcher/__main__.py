"""``python -m launcher``: the ``pscluster`` command without its console script."""

from launcher.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
