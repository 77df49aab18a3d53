"""Old path of cerebellum_ray.native.llama, kept so earlier imports and pickled studies resolve."""

import sys

from .native import llama as _moved

sys.modules[__name__] = _moved
