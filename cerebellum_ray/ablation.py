"""Old path of cerebellum_ray.study.ablation, kept so earlier imports and pickled studies resolve."""

import sys

from .study import ablation as _moved

sys.modules[__name__] = _moved
