"""Old path of cerebellum_ray.quant.build, kept so earlier imports and pickled studies resolve."""

import sys

from .quant import build as _moved

sys.modules[__name__] = _moved
