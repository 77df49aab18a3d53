"""Old path of cerebellum_ray.core.store, kept so earlier imports and pickled studies resolve."""

import sys

from .core import store as _moved

sys.modules[__name__] = _moved
