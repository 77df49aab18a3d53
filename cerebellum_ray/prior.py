"""Old path of cerebellum_ray.predict.prior, kept so earlier imports and pickled studies resolve."""

import sys

from .predict import prior as _moved

sys.modules[__name__] = _moved
