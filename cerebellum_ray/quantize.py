"""Old path of cerebellum_ray.quant.quantize, kept so earlier imports and pickled studies resolve."""

import sys

from .quant import quantize as _moved

sys.modules[__name__] = _moved
