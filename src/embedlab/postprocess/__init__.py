"""Descriptor post-processing for copy detection (``embedlab postprocess``).

One module per step: :mod:`.ensemble`, :mod:`.whitening`, :mod:`.stretching`,
:mod:`.score_normalization`; :mod:`.neighbours` holds the training-set
similarity they share and :mod:`.pipeline` runs them in order.
"""

from embedlab.postprocess.pipeline import PostprocessConfig, PostprocessInfo, postprocess, postprocess_files
from embedlab.postprocess.whitening import Whitening, fit_whitening

__all__ = ["PostprocessConfig", "PostprocessInfo", "Whitening", "fit_whitening", "postprocess", "postprocess_files"]
