"""Old path of cerebellum_ray.study.run, kept so earlier imports and pickled studies resolve."""

import sys

from .study import run as _moved

sys.modules[__name__] = _moved
