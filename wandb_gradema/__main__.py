"""``python -m wandb_gradema COMMAND``: see ``wandb_gradema.cli``."""

import sys

from .cli import main

sys.exit(main())
