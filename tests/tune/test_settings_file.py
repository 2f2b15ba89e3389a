"""raytower tune --config tune.yaml: tune flags from a file, the command line's over them."""

import pytest

from raytower.cli import build_parser, main
from raytower.tune._settings_file import apply_settings_file


def parsed(argv):
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args, apply_settings_file(args)


def test_the_file_gives_defaults_and_flags_override_them(tmp_path):
    f = tmp_path / "tune.yaml"
    f.write_text("space: quick\nnum_samples: 3\nmax-epochs: 4\ntime-budget: 60\ntruthful_pruning: false\n"
                 "data: synthetic:n_users=300\nlogger: mlflow\n")
    args, named = parsed(["tune", "--config", str(f), "--max-epochs", "7"])
    assert (args.space, args.num_samples, args.max_epochs, args.time_budget_s) == ("quick", 3, 7, 60.0)
    assert args.truthful_pruning is False and args.data == "synthetic:n_users=300" and args.logger == ["mlflow"]
    assert named >= {"num_samples", "max_epochs", "time_budget_s", "truthful_pruning"}
    g = tmp_path / "flip.yaml"
    g.write_text("no-truthful-pruning: true\n")  # the switch's own name reads as the flag does
    assert parsed(["tune", "--config", str(g)])[0].truthful_pruning is False


@pytest.mark.parametrize("text, says", [
    ("num_samples: eight\n", "num_samples: must be an integer, got str 'eight'"),
    ("max_epochs: 2.5\n", "max_epochs: must be an integer, got float 2.5"),
    ("nope: 1\n", "unknown key 'nope'"),
    ("truthful_pruning: 1\n", "truthful_pruning: must be true or false"),
    ("searcher: bogus\n", "searcher: must be one of tpe, tpe-mv, random"),
    ("- num_samples\n", "maps flag names to values, got a list"),
    ("logger: [foo]\n", "logger: 'foo' is none of mlflow, wandb"),
    ("a: [\n", "not valid YAML"),
    # each of these once ran, the last of two values (or the flag's message) silently winning
    ("num_samples: 16\nnum_samples: 4\n", "'num_samples' is given twice in a tune settings file (line 2)"),
    ("time-budget: 10\ntime_budget_s: 20\n", "time_budget_s and time-budget name the same setting"),
    ("truthful_pruning: true\nno_truthful_pruning: true\n", "no_truthful_pruning and truthful_pruning name"),
    ("num_samples: -3\n", "num_samples must be >= 1, got -3"),  # was "--num-samples must be", no file named
    ("study_name: ''\n", "study_name must be 1 to 512 printable characters"),
])
def test_a_bad_file_is_one_line_naming_it_and_exit_2(tmp_path, capsys, text, says):
    f = tmp_path / "tune.yaml"
    f.write_text(text)
    assert main(["tune", "--config", str(f), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"raytower: error: {f}: ") and says in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where, says", [("dir", "not a file"), ("missing.yaml", "no such file")])
def test_config_that_is_not_a_file_says_which(tmp_path, capsys, where, says):
    (tmp_path / "dir").mkdir()
    assert main(["tune", "--config", str(tmp_path / where), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"raytower: error: {tmp_path / where}: {says}: --config takes a tune settings file (YAML)\n"
