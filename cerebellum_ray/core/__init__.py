"""Foundations every room stands on: errors, atomic writes, digests, units, the schema, the result store.

Imports nothing eagerly: llama_cpp must load before numpy."""
