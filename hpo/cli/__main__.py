"""``python -m hpo.cli``: the ``hpo`` command."""

import sys

from hpo.cli.main import main

sys.exit(main())
