"""Old path of cerebellum_ray.evaluate.corpus, kept so earlier imports and pickled studies resolve."""

import sys

from .evaluate import corpus as _moved

sys.modules[__name__] = _moved
