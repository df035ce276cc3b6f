"""ResGen: efficient generative modeling with residual vector quantization-based tokens.

Reference implementation of Kim et al., ICML 2025 (arXiv 2412.10208).
"""

from resgen.codec import CodecOutput, RVQCodec
from resgen.codec_module import CodecModule
from resgen.conditioning import ClassConditioner, Conditioner, Unconditional
from resgen.masking import hierarchical_mask
from resgen.metrics import FeatureExtractor, GenerativeEvaluator
from resgen.model import ResGen
from resgen.plugins import Modality
from resgen.sampling import SamplingConfig, masked_counts_schedule, sample_tokens

__version__ = "0.1.0"

__all__ = [
    "ClassConditioner",
    "CodecModule",
    "CodecOutput",
    "Conditioner",
    "FeatureExtractor",
    "GenerativeEvaluator",
    "Modality",
    "RVQCodec",
    "ResGen",
    "SamplingConfig",
    "Unconditional",
    "hierarchical_mask",
    "masked_counts_schedule",
    "sample_tokens",
]
