"""`torch-rln bench tabular`'s data: the built-in loaders, the CSV path and its errors, the splits."""

import hashlib
import socket

import numpy as np
import pytest
from helpers import tabular_csv

pytest.importorskip("sklearn")
pytest.importorskip("optuna")
pytest.importorskip("rich")

from torch_rln_cli import main as cli_main
from torch_rln_cli.tabular import datasets
from torch_rln_cli.tabular.arguments import DATASET_NAMES
from torch_rln_cli.tabular.csv_input import InputError, read_csv
from torch_rln_cli.tabular.prepare import Inputs, prepare, split_rows

# name: (rows, inputs, task, classes or None, noise inputs, relevant inputs)
EXPECTED = {
    "boston": (506, 13, "regression", None, 0, None),
    "diabetes": (442, 10, "regression", None, 0, None),
    "breast_cancer": (569, 30, "classification", 2, 0, None),
    "digits": (1797, 61, "classification", 10, 0, None),  # 64 pixels, 3 of them 0 in every image
    "boston_noise": (506, 143, "regression", None, 130, None),
    "diabetes_noise": (442, 110, "regression", None, 100, None),
    "breast_cancer_noise": (569, 330, "classification", 2, 300, None),
    "digits_noise": (1797, 671, "classification", 10, 610, None),
    "friedman1": (600, 55, "regression", None, 50, 5),
    "make_classification": (600, 60, "classification", 2, 50, 10),
}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network use: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_the_argument_list_names_every_loader_and_the_help_the_presets():
    from torch_rln_cli.tabular.run import PRESETS

    assert DATASET_NAMES == datasets.DATASETS == tuple(EXPECTED)
    help_text = " ".join(cli_main.build_parser()._subparsers._group_actions[0].choices["bench"].format_help().split())
    assert "default: " + ", ".join(PRESETS["default"].datasets) in help_text
    full, default, suite = PRESETS["full"], PRESETS["default"], PRESETS["suite"]
    assert (
        f"{full.seeds} seeds, {full.trials} trials (default: {default.seeds} seeds, {default.trials} trials"
        in help_text
    )
    assert f"{' and '.join(suite.datasets)}, {suite.seeds} seeds, {suite.trials} trials" in help_text


def test_bench_with_no_experiment_runs_the_small_tabular_suite_and_names_the_full_one():
    from torch_rln_cli import experiments
    from torch_rln_cli.tabular.run import FULL_COMMAND, PRESETS, settings_for, shortened

    parser = cli_main.build_parser()
    args = parser.parse_args(["bench"])
    assert args.experiment is None
    assert "tabular" in experiments.EXPERIMENTS  # `torch-rln bench` runs it too
    settings, names = settings_for(args, "cpu")
    assert names == list(PRESETS["suite"].datasets) == ["boston_noise", "friedman1"]
    assert settings.seeds == [0, 1, 2]
    assert settings.trials == 8
    assert shortened(args)
    assert FULL_COMMAND.startswith("torch-rln bench tabular --full")
    assert settings_for(parser.parse_args(["bench", "tabular"]), "cpu")[1] == list(PRESETS["default"].datasets)
    assert not shortened(parser.parse_args(["bench", "tabular", "--full"]))
    assert not shortened(parser.parse_args(["bench", "tabular", "--csv", "x.csv", "--target", "y"]))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_loader_has_its_shape_and_task_and_uses_no_network(name, no_network):
    rows, inputs, task, classes, noise, relevant = EXPECTED[name]
    table = datasets.load(name)
    assert table.name == name
    assert table.task == task
    assert table.numeric.shape == (rows, inputs)
    assert table.y.shape == (rows,)
    assert np.isfinite(table.numeric).all()
    assert table.categorical.shape == (rows, 0)
    if classes:
        assert table.y.dtype == np.int64
        assert len(np.unique(table.y)) == classes
    else:
        assert table.y.dtype == np.float64
    assert len(table.noise or []) == noise
    assert len(table.relevant or []) == (relevant or 0)
    if table.kind == "noised":  # the noise columns come last, standard normal, and the same in every load
        x = table.numeric[:, -noise:]
        assert abs(x.mean()) < 0.05
        assert abs(x.std() - 1) < 0.05
        np.testing.assert_array_equal(datasets.load(name).numeric, table.numeric)


def test_boston_is_the_packaged_file_in_full():
    from torch_rln_cli.rln_boston.data import load_boston_housing

    (_, y), (_, y_test) = load_boston_housing(noise_features=0)
    table = datasets.load("boston")
    assert sorted(table.y) == sorted([*y, *y_test])
    assert table.inputs[-1] == "LSTAT"


def test_an_unknown_data_set_is_refused_by_name():
    with pytest.raises(ValueError, match="Unknown data set: 'iris'"):
        datasets.load("iris")


# ---------------------------------------------------------------- splits and transforms
@pytest.mark.parametrize("name", ["breast_cancer", "diabetes"])
def test_splits_are_disjoint_and_stratified(name):
    table = datasets.load(name)
    for seed in (0, 1):
        s = split_rows(table, seed)
        parts = [set(s.train), set(s.val), set(s.test)]
        assert not (parts[0] & parts[1])
        assert not (parts[0] & parts[2])
        assert not (parts[1] & parts[2])
        assert set().union(*parts) == set(range(table.rows))
        assert abs(len(s.test) - 0.2 * table.rows) <= 1
        assert abs(len(s.val) - 0.2 * table.rows) <= 1
        if table.task == "classification":
            share = table.y.mean()
            for rows in (s.train, s.val, s.test):
                assert abs(table.y[rows].mean() - share) < 0.02
    assert set(split_rows(table, 0).test) != set(split_rows(table, 1).test)


def test_transforms_are_fit_on_the_training_rows_alone(monkeypatch):
    table = datasets.load("boston_noise")
    fitted = []
    original = Inputs.fit

    def spy(self, table, rows):
        fitted.append(np.array(rows))
        return original(self, table, rows)

    monkeypatch.setattr(Inputs, "fit", spy)
    p = prepare(table, 3)
    assert len(fitted) == 1
    np.testing.assert_array_equal(fitted[0], p.split.train)
    np.testing.assert_allclose(p.x_train.mean(axis=0), 0, atol=1e-5)
    x = table.numeric
    mean, std = x[p.split.train].mean(0), x[p.split.train].std(0)
    np.testing.assert_allclose(p.x_test, (x[p.split.test] - mean) / std, rtol=1e-5, atol=1e-5)
    y = table.y
    np.testing.assert_allclose(p.y_train, (y[p.split.train] - y[p.split.train].mean()) / y[p.split.train].std())
    np.testing.assert_array_equal(p.y_test, y[p.split.test])  # the test target stays in its units


# ---------------------------------------------------------------- the CSV path
def write(path, text):
    path.write_text(text)
    return path


def unsaid(table, *phrases):
    """The phrases that the table's notes (what the report says was done to the data) lack."""
    notes = " ".join(table.notes)
    return [phrase for phrase in phrases if phrase not in notes]


def good_csv(tmp_path):
    return tabular_csv(tmp_path / "good.csv")


def test_a_good_csv_one_hot_encodes_its_text_column_and_drops_the_constant_one(tmp_path):
    table = read_csv(good_csv(tmp_path), "y")
    assert table.task == "regression"
    assert table.rows == 60
    assert table.numeric_names == ["a", "b"]
    assert table.categorical_names == ["color"]
    assert not unsaid(table, "task inferred: regression", "constant column dropped", "const", "one-hot", "color")
    p = prepare(table, 0)
    assert p.x_train.shape[1] == 2 + 3
    assert p.names[2:] == ["color=blue", "color=green", "color=red"]
    assert p.columns == [0, 1, 2, 2, 2]
    assert set(np.unique(p.x_train[:, 2:])) <= {0.0, 1.0}


def test_the_csv_task_is_inferred_from_the_target_and_text_labels_are_classes(tmp_path):
    rows = ["x,label"] + [f"{i},{'yes' if i % 2 else 'no'}" for i in range(50)]
    table = read_csv(write(tmp_path / "t.csv", "\n".join(rows)), "label")
    assert table.task == "classification"
    assert "2 classes" in table.notes[0]
    rows = ["x;k"] + [f"{i};{i % 3}" for i in range(50)]  # semicolons, integer classes
    table = read_csv(write(tmp_path / "k.csv", "\n".join(rows)), "k")
    assert table.task == "classification"
    assert "3 integer values" in table.notes[0]
    assert read_csv(tmp_path / "k.csv", "k", task="regression").task == "regression"


def test_a_csv_reads_decimal_commas_as_numbers_and_drops_identifier_columns(tmp_path):
    rows = ["id;size;note;y"] + [f"P{i:04d};{i % 7},5;n{i % 40};{i * 0.25:.2f}".replace(".", ",") for i in range(50)]
    table = read_csv(write(tmp_path / "eu.csv", "\n".join(rows)), "y")
    assert table.task == "regression"
    assert table.numeric_names == ["size"]
    assert table.categorical_names == ["note"]
    np.testing.assert_allclose(table.numeric[:3, 0], [0.5, 1.5, 2.5])
    np.testing.assert_allclose(table.y[:3], [0.0, 0.25, 0.5])
    assert not unsaid(
        table, "decimal commas read as numbers", "size", "different value in every row dropped", ": id",
        "an identifier or free text", "note (40 values)",
    )  # fmt: skip


def test_csv_impute_fills_the_missing_inputs(tmp_path):
    text = good_csv(tmp_path).read_text().splitlines()
    text[3] = ",".join(["", *text[3].split(",")[1:]])
    text[5] = ",".join([text[5].split(",")[0], "NA", "", *text[5].split(",")[3:]])
    path = write(tmp_path / "gaps.csv", "\n".join(text))
    table = read_csv(path, "y", impute="mean")
    assert "missing values imputed (mean" in " ".join(table.notes)
    p = prepare(table, 0, impute="mean")
    assert np.isfinite(p.x_train).all()
    assert np.isfinite(p.x_test).all()


BAD = {
    "missing target": ("a,b\n" + "1,2\n" * 50, ["--target", "y"], "no column named 'y'"),
    "missing values": (
        "a,b,y\n" + "".join(f"{'' if i < 3 else i},{'NA' if i == 7 else i},{i}\n" for i in range(50)),
        ["--target", "y"],
        "missing values in 2 columns: a (3), b (1); pass --impute",
    ),
    "text regression target": (
        "a,y\n" + "".join(f"{i},{'x' if i == 4 else i}\n" for i in range(50)),
        ["--target", "y", "--task", "regression"],
        "the target column 'y' is not numeric (e.g. 'x')",
    ),
    "single class": ("a,y\n" + "".join(f"{i},yes\n" for i in range(50)), ["--target", "y"], "a single class ('yes')"),
    "too few rows": (
        "a,y\n" + "".join(f"{i},{i * 0.5}\n" for i in range(20)), ["--target", "y"],
        "20 rows; the protocol needs at least 40",
    ),
    "rare class": (
        "a,y\n" + "".join(f"{i},{'b' if i < 3 else 'a'}\n" for i in range(50)),
        ["--target", "y"],
        "too few rows of class 'b' (3)",
    ),
    "duplicate columns": ("a,b,a,y\n" + "1,2,3,4\n" * 50, ["--target", "y"], "duplicate column names: 'a' (2 times)"),
    "missing target values": (
        "a,y\n" + "".join(f"{i},{'' if i == 9 else i}\n" for i in range(50)), ["--target", "y"],
        "the target column 'y' has 1 missing values (rows 11)",
    ),
    "ragged row": (
        "a,y\n1,2\n3\n" + "1,2\n" * 50, ["--target", "y"], "a row has 1 fields where the header has 2 (row 3)"
    ),
    "empty file": ("", ["--target", "y"], "the file is empty"),
}  # fmt: skip


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_csv_is_one_line_and_exit_2(case, tmp_path, capsys):
    text, extra, message = BAD[case]
    path = write(tmp_path / "bad.csv", text)
    before = digest(path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["bench", "tabular", "--csv", str(path), *extra, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1  # one line
    assert "Traceback" not in err
    assert str(path) in err  # it names the file
    assert digest(path) == before  # never modified


def test_a_missing_csv_file_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(
            ["bench", "tabular", "--csv", str(tmp_path / "nope.csv"), "--target", "y", "--out", str(tmp_path)]
        )
    assert exit_info.value.code == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--csv", "x.csv", "--target", "y"], "name the experiment"),
        (["bench", "rln", "--datasets", "boston"], "name the experiment"),
        (["bench", "tabular", "--csv", "x.csv"], "--target COLUMN"),
        (["bench", "tabular", "--target", "y"], "give it with --csv PATH"),
        (["bench", "tabular", "--datasets", "boston,iris"], "unknown: iris"),
    ],
)
def test_argument_errors_exit_2_and_say_what_to_do(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_input_error_is_raised_by_the_reader(tmp_path):
    with pytest.raises(InputError, match="duplicate column names"):
        read_csv(write(tmp_path / "d.csv", "a,a,y\n" + "1,2,3\n" * 50), "y")
