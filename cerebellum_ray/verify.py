"""Old path of cerebellum_ray.results.verify, kept so earlier imports and pickled studies resolve."""

import sys

from .results import verify as _moved

sys.modules[__name__] = _moved
