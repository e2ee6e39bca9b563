"""Meta-RL algorithms, one folder per method: ``config.py`` (typed config) and ``algo.py`` (the loop)."""
