"""Old path of cerebellum_ray.evaluate.score, kept so earlier imports and pickled studies resolve."""

import sys

from .evaluate import score as _moved

sys.modules[__name__] = _moved
