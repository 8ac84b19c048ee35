"""``python -m pspnet.cli`` (and ``torchrun -m pspnet.cli``): the ``pspnet`` command."""

import sys

from . import main

sys.exit(main())
