"""The published RMSLN experiment: Adam vs Adam + RMSLNWrapper on MNIST-1D, tuned with Optuna.

The write-up tuned a baseline (Adam; learning rate) and RMSLN (Adam + the RMS-norm
penalty; learning rate and ``reg_lambda``) with Optuna, trained the best of each for 100
epochs once, and compared validation-loss curves (its figures are in
:data:`~.protocol.PUBLISHED`). This rerun tunes both the same way, then trains each best
setting with several seeds and compares them seed by seed, with a confidence interval.

* Data: MNIST-1D regenerated offline (4000 training / 1000 test sequences of length 40).
* Model: MLP 40 -> 100 -> 100 -> 10 with ReLU, cross-entropy, Adam. Batch: the whole
  training set under ``protocol="published"`` (100 Adam steps in 100 epochs: the write-up
  does not give its batch; ``--investigate`` measures which batch comes near its figures),
  100 under ``protocol="holdout"``; ``batch_size`` sets either.
* ``protocol="published"``: trials and final curves use the 1000-sequence split that the
  write-up calls validation. ``protocol="holdout"``: trials and curves use a validation
  split carved from the training set (800 sequences); the test split is scored once, at
  the end of each final run.
* Optuna: TPE with a fixed seed; baseline searches lr (log 1e-4..1e-1); RMSLN searches lr
  and reg_lambda (log 1e-6..1e-1). The objective is the validation loss after
  ``trial_epochs`` epochs (the write-up does not say how long its trials ran); a median
  pruner gets the validation loss of every epoch. Studies live in a storage (SQLite in
  the output folder by default), so a rerun resumes and never reruns a finished trial.

Modules, in the order a run uses them: :mod:`.arguments` (the command-line options),
:mod:`.protocol` (settings and the published figures), :mod:`.data`, :mod:`.training` (the
model and its training loop), :mod:`.tuning` (the Optuna studies), :mod:`.experiment`
(tuning, then the final runs), :mod:`.results` (summaries, the verdict, the JSON),
:mod:`.investigation` (``--investigate``: where the write-up's figures come from),
:mod:`.report`, :mod:`.plots` and :mod:`.run` (the command's runner).
"""
