"""Old path of cerebellum_ray.formats.space, kept so earlier imports and pickled studies resolve."""

import sys

from .formats import space as _moved

sys.modules[__name__] = _moved
