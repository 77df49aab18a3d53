"""Old path of cerebellum_ray.formats.precision_map, kept so earlier imports and pickled studies resolve."""

import sys

from .formats import precision_map as _moved

sys.modules[__name__] = _moved
