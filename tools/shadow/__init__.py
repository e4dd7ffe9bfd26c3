"""``chimera shadow``: candidate genomes trading the live tick telemetry on paper, beside the
active genome and out of the hot path (issue 16). See ``tools/shadow/runner.py``."""
