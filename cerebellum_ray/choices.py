"""Old path of cerebellum_ray.predict.choices, kept so earlier imports and pickled studies resolve."""

import sys

from .predict import choices as _moved

sys.modules[__name__] = _moved
