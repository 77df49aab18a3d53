"""Old path of cerebellum_ray.results.export, kept so earlier imports and pickled studies resolve."""

import sys

from .results import export as _moved

sys.modules[__name__] = _moved
