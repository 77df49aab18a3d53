"""Old path of cerebellum_ray.evaluate.humaneval, kept so earlier imports and pickled studies resolve."""

import sys

from .evaluate import humaneval as _moved

sys.modules[__name__] = _moved
