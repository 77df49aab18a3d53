"""What files and specs say: ggml types, GGUF headers, the model catalog, presets, precision maps, imatrix files,
search spaces, tiny models.

Imports nothing eagerly: llama_cpp must load before numpy."""
