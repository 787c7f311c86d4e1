"""``torch-rln bench tabular``: does RLN help on tabular data, and on *my* data?

RLN against the regularizers and the trees people use, each tuned with the same Optuna
budget on a validation split, scored once on a test split, over several seeds. See
:mod:`.run` for the command and :mod:`.protocol` for the protocol.
"""
