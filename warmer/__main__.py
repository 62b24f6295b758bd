"""`python -m warmer` is the same as the `nnunet-warmer` command."""

from warmer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
