"""Old path of cerebellum_ray.evaluate.llama_runner, kept so earlier imports and pickled studies resolve."""

import sys

from .evaluate import llama_runner as _moved

sys.modules[__name__] = _moved
