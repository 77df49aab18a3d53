"""Old path of cerebellum_ray.results.report, kept so earlier imports and pickled studies resolve."""

import sys

from .results import report as _moved

sys.modules[__name__] = _moved
