"""The published RLN experiment: Boston housing + 1000 noise features, RLN vs L1 vs none.

The protocol of the RLN authors' tutorial, reproduced with :class:`torch_rln.RLNOptimizer`:

* data: Boston housing, Keras split (404 / 102), 1000 N(0, 1) noise features appended,
  standardized with the training set's statistics;
* model: a ReLU MLP with geometric widths (:func:`~torch_rln_cli.common.stacked.geometric_widths`),
  then a linear output; Keras' ``glorot_normal`` weights, zero biases; RMSprop with the Keras
  defaults (lr 1e-3, rho 0.9, eps 1e-7); MSE; batch 10; 100 epochs; 10 repeats;
* search: depth 2, 3, ... until the mean gets worse; then L1 on the first layer with
  strength 1e-2, 1e-1, 1, ... until worse; then RLN on the first layer over a
  (Theta, log10 nu) grid, all at the best depth.

Differences from the Keras original, forced by torch or chosen and documented: the
repeats of a configuration train together as one stacked model (identical math, see
:mod:`~torch_rln_cli.common.stacked`); the random streams (initialization, shuffles, noise)
are torch's and NumPy's, not TensorFlow's, so single numbers differ while the distributions match.

``protocol="published"`` picks configurations by their test score, as the tutorial does.
``protocol="holdout"`` picks them on a validation split of the training set and scores
the chosen ones on the test set once.

Modules, in the order a run uses them: :mod:`.arguments` (the command-line options),
:mod:`.protocol` (settings and the published figures), :mod:`.data`, :mod:`.model` (one
configuration's model and optimizer), :mod:`.search` (training and the search),
:mod:`.analysis` (what a run found), :mod:`.results` (the JSON), :mod:`.report`,
:mod:`.plots` and :mod:`.run` (the command's runner).
"""
