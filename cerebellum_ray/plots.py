"""Old path of cerebellum_ray.results.plots, kept so earlier imports and pickled studies resolve."""

import sys

from .results import plots as _moved

sys.modules[__name__] = _moved
