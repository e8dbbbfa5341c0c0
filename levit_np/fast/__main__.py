"""python -m levit_np.fast: the processes that compile the kernels (`compiled.main`)."""

import sys

from .compiled import main

sys.exit(main())
