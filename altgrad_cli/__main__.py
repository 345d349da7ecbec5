"""`python -m altgrad_cli`: the same as the `altgrad` console script."""

from altgrad_cli.cli.app import main

main()
