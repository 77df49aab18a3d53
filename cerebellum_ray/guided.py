"""Old path of cerebellum_ray.study.guided, kept so earlier imports and pickled studies resolve."""

import sys

from .study import guided as _moved

sys.modules[__name__] = _moved
