"""Old path of cerebellum_ray.evaluate.logprobs, kept so earlier imports and pickled studies resolve."""

import sys

from .evaluate import logprobs as _moved

sys.modules[__name__] = _moved
