"""Old path of cerebellum_ray.core.errors, kept so earlier imports and pickled studies resolve."""

import sys

from .core import errors as _moved

sys.modules[__name__] = _moved
