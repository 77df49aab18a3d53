"""Old path of cerebellum_ray.core.digests, kept so earlier imports and pickled studies resolve."""

import sys

from .core import digests as _moved

sys.modules[__name__] = _moved
