"""Old path of cerebellum_ray.evaluate.chat, kept so earlier imports and pickled studies resolve."""

import sys

from .evaluate import chat as _moved

sys.modules[__name__] = _moved
