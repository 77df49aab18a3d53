"""Old path of cerebellum_ray.predict.solver, kept so earlier imports and pickled studies resolve."""

import sys

from .predict import solver as _moved

sys.modules[__name__] = _moved
