"""Old path of cerebellum_ray.results.recommend, kept so earlier imports and pickled studies resolve."""

import sys

from .results import recommend as _moved

sys.modules[__name__] = _moved
