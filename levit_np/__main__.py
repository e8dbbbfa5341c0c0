"""`python -m levit_np ...` runs the `levit-np` command line."""

from .app.cli import main

raise SystemExit(main())
