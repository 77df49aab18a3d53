"""Old path of cerebellum_ray.evaluate.generate, kept so earlier imports and pickled studies resolve."""

import sys

from .evaluate import generate as _moved

sys.modules[__name__] = _moved
