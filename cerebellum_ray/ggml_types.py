"""Old path of cerebellum_ray.formats.ggml_types, kept so earlier imports and pickled studies resolve."""

import sys

from .formats import ggml_types as _moved

sys.modules[__name__] = _moved
