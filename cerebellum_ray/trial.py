"""Old path of cerebellum_ray.study.trial, kept so earlier imports and pickled studies resolve."""

import sys

from .study import trial as _moved

sys.modules[__name__] = _moved
