"""Old path of cerebellum_ray.formats.imatrix, kept so earlier imports and pickled studies resolve."""

import sys

from .formats import imatrix as _moved

sys.modules[__name__] = _moved
