"""``python -m lora_rank``: the same as the ``lora-rank`` command (see :mod:`lora_rank.cli`)."""

import sys

from .cli import main

sys.exit(main())
