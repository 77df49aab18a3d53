"""cerebellum-ray: find the best mixed-precision GGUF quantization by measurement."""

__version__ = "0.1.0"

# Bumped whenever quantized bytes could change for the same inputs (it is part of every tensor-cache key).
QUANTIZER_VERSION = f"llama-cpp-python-0.3.36/ggml-quantize-chunk/{__version__}"
