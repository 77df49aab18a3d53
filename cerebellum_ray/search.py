"""Old path of cerebellum_ray.study.search, kept so earlier imports and pickled studies resolve."""

import sys

from .study import search as _moved

sys.modules[__name__] = _moved
