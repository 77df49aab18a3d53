"""Old path of cerebellum_ray.results.surgery, kept so earlier imports and pickled studies resolve."""

import sys

from .results import surgery as _moved

sys.modules[__name__] = _moved
