"""genrec_ext: C++/CUDA-accelerated generative recommendation (GenRec, arXiv 2604.14878) for PyTorch."""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before our extension links against it)

try:
    from . import _C  # noqa: F401  (registers torch.ops.genrec.*)
except ImportError as exc:  # pragma: no cover - only hit on a broken install
    raise ImportError(
        "genrec_ext._C (the compiled ops) could not be loaded. Install the package with "
        "`pip install --no-build-isolation .` (or `-e .`) against the installed torch; "
        "running from a source tree without a build does not work."
    ) from exc

from . import nn, ops  # noqa: E402

__version__ = "0.1.0"
__all__ = ["nn", "ops", "__version__"]
