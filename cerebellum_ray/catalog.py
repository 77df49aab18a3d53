"""Old path of cerebellum_ray.formats.catalog, kept so earlier imports and pickled studies resolve."""

import sys

from .formats import catalog as _moved

sys.modules[__name__] = _moved
