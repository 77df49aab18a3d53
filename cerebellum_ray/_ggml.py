"""Old path of cerebellum_ray.native.ggml, kept so earlier imports and pickled studies resolve."""

import sys

from .native import ggml as _moved

sys.modules[__name__] = _moved
