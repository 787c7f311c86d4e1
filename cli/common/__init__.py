"""What the experiments share: statistics, tables, figures, progress, the machine, data
helpers, the stacked MLP and the Optuna plumbing. Nothing here names an experiment."""
