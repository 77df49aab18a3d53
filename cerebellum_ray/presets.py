"""Old path of cerebellum_ray.formats.presets, kept so earlier imports and pickled studies resolve."""

import sys

from .formats import presets as _moved

sys.modules[__name__] = _moved
