"""Old path of cerebellum_ray.quant.tensor_cache, kept so earlier imports and pickled studies resolve."""

import sys

from .quant import tensor_cache as _moved

sys.modules[__name__] = _moved
