"""Making a GGUF: one tensor quantized, the tensor cache, the streamed build.

Imports nothing eagerly: llama_cpp must load before numpy."""
