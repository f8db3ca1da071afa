"""Machine learning on the participant's side: models, training, datasets, the torch adapter.

Owns the flat parameter vector a model trains and the datasets that ship with packages.
Knows nothing of the protocol: numpy (and, optionally, torch) only.
"""
