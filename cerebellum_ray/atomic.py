"""Old path of cerebellum_ray.core.atomic, kept so earlier imports and pickled studies resolve."""

import sys

from .core import atomic as _moved

sys.modules[__name__] = _moved
