"""``python -m doubleopt ...`` is the ``doubleopt`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
