"""`python -m cerebellum_ray.cli`: the cerebellum-ray command."""

import sys

from . import main

sys.exit(main())
