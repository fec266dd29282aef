"""``python -m pyro_grad.cli``: the ``pyro-grad`` command."""

import sys

from pyro_grad.cli.commands import main

sys.exit(main())
