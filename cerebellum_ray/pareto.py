"""Old path of cerebellum_ray.predict.fronts, kept so earlier imports and pickled studies resolve."""

import sys

from .predict import fronts as _moved

sys.modules[__name__] = _moved
