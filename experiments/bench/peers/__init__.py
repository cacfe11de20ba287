"""One script per peer framework, each run by that framework's own Python (a separate venv), so
none of them is imported by pojax: ``<python> experiments/bench/peers/<peer>_dpo.py --model=DIR
--data=FILE --steps=N --out=FILE``. Each writes one JSON object: per-step wall times, the loss
at every step, and the process's peak resident memory."""
