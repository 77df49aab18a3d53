"""Old path of cerebellum_ray.core.schema, kept so earlier imports and pickled studies resolve."""

import sys

from .core import schema as _moved

sys.modules[__name__] = _moved
