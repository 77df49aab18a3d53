"""Old path of cerebellum_ray.predict.surrogate, kept so earlier imports and pickled studies resolve."""

import sys

from .predict import surrogate as _moved

sys.modules[__name__] = _moved
