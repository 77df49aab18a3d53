"""Running a model: llama.cpp runner, reference logits, PPL/KLD, chat, generation, HumanEval and its sandbox, imatrix
collection.

Imports nothing eagerly: llama_cpp must load before numpy."""
