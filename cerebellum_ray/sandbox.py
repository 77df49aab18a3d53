"""Old path of cerebellum_ray.evaluate.sandbox, kept so earlier imports and pickled studies resolve."""

import sys

from .evaluate import sandbox as _moved

sys.modules[__name__] = _moved
