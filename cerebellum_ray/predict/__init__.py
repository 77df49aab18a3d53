"""Predicting before measuring: choices with byte costs, the prior, the surrogate, the exact solver, fronts and
hypervolume.

Imports nothing eagerly: llama_cpp must load before numpy."""
