"""Old path of cerebellum_ray.evaluate.reference, kept so earlier imports and pickled studies resolve."""

import sys

from .evaluate import reference as _moved

sys.modules[__name__] = _moved
