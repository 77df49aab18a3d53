"""Old path of cerebellum_ray.formats.gguf_io, kept so earlier imports and pickled studies resolve."""

import sys

from .formats import gguf_io as _moved

sys.modules[__name__] = _moved
