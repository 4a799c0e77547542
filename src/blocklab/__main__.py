"""``python -m blocklab``: the same command line as the ``blocklab`` script."""

from blocklab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
