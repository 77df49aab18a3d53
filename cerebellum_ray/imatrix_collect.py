"""Old path of cerebellum_ray.evaluate.imatrix_collect, kept so earlier imports and pickled studies resolve."""

import sys

from .evaluate import imatrix_collect as _moved

sys.modules[__name__] = _moved
