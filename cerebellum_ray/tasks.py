"""Old path of cerebellum_ray.evaluate.tasks, kept so earlier imports and pickled studies resolve."""

import sys

from .evaluate import tasks as _moved

sys.modules[__name__] = _moved
