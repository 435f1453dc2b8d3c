"""Built-in tasks beyond the GPT demo, each runnable as ``python -m ringtrain train --model ringtrain.examples.<name>:task``."""
