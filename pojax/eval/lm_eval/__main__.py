"""``python -m pojax.eval.lm_eval <lm_eval flags>``: lm-eval's own command line with the
``pojax`` model registered (importing pojax.eval.lm_eval registers it)."""
import pojax.eval.lm_eval  # noqa: F401  (registers --model pojax)
from lm_eval.__main__ import cli_evaluate

if __name__ == "__main__":
    cli_evaluate()
