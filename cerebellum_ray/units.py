"""Old path of cerebellum_ray.core.units, kept so earlier imports and pickled studies resolve."""

import sys

from .core import units as _moved

sys.modules[__name__] = _moved
