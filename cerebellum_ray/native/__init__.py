"""The native boundary: the one ctypes binding of ggml and the one import of llama_cpp.

Imports nothing eagerly: llama_cpp must load before numpy."""
