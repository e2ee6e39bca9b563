"""Meta-RL algorithms, one folder per method: ``config.py`` (typed config) and ``algo.py`` (the loop);
what they share (PPO config, tasks section, collection through the samplers, warm start and DAgger)
is in :mod:`.common`, written once."""
