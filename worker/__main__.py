"""``python -m worker`` is the same as the ``reauth`` command."""

from worker.cli import main

main()
