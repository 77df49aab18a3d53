"""A study on Ray Tune: the trial, the shared run machinery, the strategies (optuna, ablation, guided).

Imports nothing eagerly: llama_cpp must load before numpy."""
