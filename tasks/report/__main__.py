"""`python -m tasks.report`."""

from tasks.report.cli import main

main()
