"""Progress and warnings travel as lines: a `Reporter` takes one line and shows it (stderr, a log, a test list)."""

from collections.abc import Callable

Reporter = Callable[[str], None]
