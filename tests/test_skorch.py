"""skorch builds the optimizer from ``RLNOptimizer.factory``: fit, predict, save/load, grid search.

Skipped when skorch or scikit-learn is missing (the ``test`` extra installs both).
"""

import numpy as np
import pytest
import torch

from torch_rln import RLNOptimizer

skorch = pytest.importorskip("skorch", reason="skorch is not installed (pip install 'torch-rln[test]')")
model_selection = pytest.importorskip("sklearn.model_selection", reason="scikit-learn is not installed")

RLN_ADAM = RLNOptimizer.factory(torch.optim.Adam, avg_reg=-6.0, reg_lr=1e4, compile=False)


def tabular(n=160, features=12, seed=0):
    """Two informative features among ``features``, standardized; float32 for torch."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = (x[:, 0] - 2 * x[:, 1] + 0.1 * rng.standard_normal(n)).astype(np.float32)
    return x, y


def regressor(**kwargs):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    settings = dict(optimizer=RLN_ADAM, lr=1e-2, max_epochs=4, batch_size=16, train_split=None, verbose=0)
    return skorch.NeuralNetRegressor(module, **{**settings, **kwargs})


def test_regressor_fits_predicts_and_resumes_from_save_params(tmp_path):
    x, y = tabular()
    net = regressor().fit(x, y[:, None])
    assert net.predict(x).shape == (160, 1)
    opt = net.optimizer_
    assert type(opt) is RLN_ADAM and opt.regularized_params() == [net.module_[0].weight, net.module_[2].weight]
    assert opt.lambdas(net.module_[0].weight).std() > 0  # RLN ran inside skorch's step(closure)

    files = {"f_params": tmp_path / "params.pt", "f_optimizer": tmp_path / "optimizer.pt"}
    net.save_params(**files)
    assert "rln_lam" in torch.load(files["f_optimizer"], weights_only=True)["state"][0]
    loaded = regressor().initialize()
    loaded.load_params(**files)
    assert torch.equal(loaded.optimizer_.lambdas(loaded.module_[0].weight), opt.lambdas(net.module_[0].weight))
    net.partial_fit(x, y[:, None], epochs=1)
    loaded.partial_fit(x, y[:, None], epochs=1)
    for p, q in zip(net.module_.parameters(), loaded.module_.parameters()):
        assert torch.equal(p, q)  # the loaded optimizer continues exactly


def test_grid_search_over_avg_reg_selects_and_refits():
    x, y = tabular()
    search = model_selection.GridSearchCV(
        regressor(), {"optimizer__avg_reg": [-12.0, -5.0]}, cv=2, scoring="neg_mean_squared_error", refit=True
    )
    search.fit(x, y[:, None])
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 2
    best = search.best_params_["optimizer__avg_reg"]
    assert best == [-12.0, -5.0][int(np.argmax(scores))]
    refitted = search.best_estimator_.optimizer_
    assert type(refitted) is RLN_ADAM and refitted.reg_groups[0]["avg_reg"] == best
    assert search.predict(x).shape == (160, 1)


def test_classifier_with_rln_on_the_first_layer_only():
    x, y = tabular()
    labels = (y > 0).astype(np.int64) + (y > 1).astype(np.int64)  # 3 classes
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    net = skorch.NeuralNetClassifier(
        module, criterion=torch.nn.CrossEntropyLoss, optimizer=RLN_ADAM, lr=1e-2, max_epochs=4,
        batch_size=16, train_split=None, verbose=0,
        optimizer__select=False,  # skorch passes no names: choose the first layer by its param group
        optimizer__param_groups=[("0.weight", {"select": True})],
    )
    net.fit(x, labels)
    assert net.optimizer_.regularized_params() == [net.module_[0].weight]
    proba = net.predict_proba(x)
    assert proba.shape == (160, 3) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    assert set(net.predict(x)) <= {0, 1, 2}
