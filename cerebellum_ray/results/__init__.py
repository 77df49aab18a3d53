"""What a user takes home: plots, report, export, verify, the budget answer (solve), surgery.

Imports nothing eagerly: llama_cpp must load before numpy."""
