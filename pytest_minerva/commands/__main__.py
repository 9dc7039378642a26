"""``python -m pytest_minerva.commands``: the ``minerva`` command."""

import sys

from pytest_minerva.commands import main

sys.exit(main())
