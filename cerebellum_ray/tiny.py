"""Old path of cerebellum_ray.formats.tiny, kept so earlier imports and pickled studies resolve."""

import sys

from .formats import tiny as _moved

sys.modules[__name__] = _moved
