"""Test-wide settings.

Hypothesis profiles: ``ci`` (the default) keeps the property tests fast and reproducible;
``thorough`` runs many more examples with fresh randomness. The central properties (cache
equivalence, padding, greedy decoding) run that count once per position scheme. Select with
``ARCHCOMPOSER_HYPOTHESIS_PROFILE=thorough python -m pytest``.

Third-party archcomposer plugins installed in the environment are not loaded (this
distribution's own built-in families still are), so the suite does not depend on what else is
installed; a test that needs autoloading sets the variable itself.

torch runs on one thread: the models here are tiny, and on a small shared machine a second
thread makes each forward spin-wait, up to 50x slower than one thread."""

import os

import torch
from hypothesis import settings

os.environ.setdefault("ARCHCOMPOSER_DISABLE_PLUGIN_AUTOLOAD", "1")
# Tiny models: on a small, shared machine several threads per matmul only add contention
# (a tiny forward took ~110 ms with two threads, ~1.7 ms with one).
torch.set_num_threads(1)

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("thorough", max_examples=300, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("ARCHCOMPOSER_HYPOTHESIS_PROFILE", "ci"))
