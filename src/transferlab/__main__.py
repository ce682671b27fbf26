"""`python -m transferlab`, which is how torchrun starts it: `torchrun --nproc_per_node 2 -m transferlab compare DATA`."""

import sys

from transferlab.cli import main

sys.exit(main())
