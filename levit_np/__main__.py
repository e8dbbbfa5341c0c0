"""`python -m levit_np ...` runs the `levit-np` command line."""

from .cli import main

raise SystemExit(main())
