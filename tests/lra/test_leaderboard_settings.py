"""The named leaderboard settings (lra/leaderboard/runner.py SETTINGS) are checked without
training: their overrides land on keys the task configs have (a misspelt key would otherwise
be added silently and fail hours later, or not at all), and their data specs parse with
``lra generate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lra.data import generate
from lra.leaderboard import runner, store

CASES = [(name, task) for name, spec in runner.SETTINGS.items() for task in spec["tasks"]]


def _leaves(d: dict[str, Any], prefix: tuple = ()) -> set[tuple]:
    out: set[tuple] = set()
    for k, v in d.items():
        out |= _leaves(v, (*prefix, k)) if isinstance(v, dict) else {(*prefix, k)}
    return out


def _config(name: str, task: str, mixer: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The run config a setting's grid builds for one cell, with ``overrides`` in place of the
    setting's own."""
    spec = runner.SETTINGS[name]
    return runner.run_config(task, mixer, quick=True, data_dir=spec["data_dir"],
                             max_steps=spec["max_steps"], budget_minutes=spec["budget_minutes"],
                             run_dir=Path("RUN"), overrides=overrides,
                             config_dir=store.REPO / "configs")


@pytest.mark.parametrize(("name", "task"), CASES)
def test_a_setting_overrides_only_keys_its_task_config_has(name, task):
    spec = runner.SETTINGS[name]
    base = _config(name, task, "s4d", {})
    cfg = _config(name, task, "s4d", spec["overrides"])
    assert _leaves(cfg) == _leaves(base), f"{name}: an override names a key {task} lacks"
    for path in _leaves(spec["overrides"]):
        got = cfg
        for k in path:
            got = got[k]
        want = spec["overrides"]
        for k in path:
            want = want[k]
        assert got == want, (name, path)
    assert cfg["trainer"]["max_steps"] == spec["max_steps"]


@pytest.mark.parametrize(("name", "task"), CASES)
def test_a_setting_data_spec_parses_with_lra_generate(name, task, monkeypatch, tmp_path):
    seen: dict[str, Any] = {}
    monkeypatch.setattr(generate, "generate_listops", lambda *a, **k: seen.update(a=a) or "x")
    monkeypatch.setattr(generate, "generate_pathfinder", lambda *a, **k: seen.update(a=a) or "x")
    generate.main([task, "--out", str(tmp_path), *runner.SETTINGS[name]["data"][task]])
    assert seen["a"][0] == str(tmp_path)


def test_the_pathfinder_probe_is_the_easiest_generated_difficulty():
    spec = runner.SETTINGS["pathfinder-probe"]
    args = spec["data"]["pathfinder"]
    assert args[args.index("--contour-length") + 1] == "6"
    assert args[args.index("--resolution") + 1] == "32"
    assert spec["overrides"]["data"]["init_args"]["contour_length"] == 6  # the loader agrees


def test_the_easy_pathfinder_generates_and_loads_the_same_difficulty():
    """The generator's --distractors and the loader's ``distractors`` must name one folder, or
    the setting would train on the release's harder data (or find none)."""
    spec = runner.SETTINGS["pathfinder-easy"]
    args = spec["data"]["pathfinder"]
    init = spec["overrides"]["data"]["init_args"]
    assert int(args[args.index("--distractors") + 1]) == init["distractors"] == 0
    assert int(args[args.index("--contour-length") + 1]) == init["contour_length"]
    assert spec["data_dir"] != runner.SETTINGS["pathfinder-probe"]["data_dir"]


def test_the_long_pathfinder_run_trains_on_the_easy_setting_data_for_longer():
    """pathfinder-long answers "does the easy probe's plateau end with more steps?", so only its
    budget may differ from pathfinder-easy: same folder, same generator arguments (else
    ensure_generated would regenerate the folder the easy runs read), same model and loader."""
    easy, long = runner.SETTINGS["pathfinder-easy"], runner.SETTINGS["pathfinder-long"]
    for key in ("data_dir", "data", "overrides", "tasks"):
        assert long[key] == easy[key], key
    assert long["max_steps"] > easy["max_steps"]
    assert long["budget_minutes"] >= 2 * easy["budget_minutes"]


def test_listops_set_generated_with_other_settings_is_generated_again(tmp_path, capsys):
    """ensure_generated keeps a ListOps set made with the same generator arguments and makes it
    again when the arguments differ (a check that changed its split sizes must not train on the
    old files)."""
    from lra.leaderboard.runner import ensure_generated

    def sizes() -> list[int]:
        root = tmp_path / "listops-1000"
        return [len((root / f"basic_{s}.tsv").read_text().splitlines()) for s in
                ("train", "val", "test")]

    lengths = ["--min-length", "5", "--max-length", "40"]
    small = ["--n-train", "20", "--n-val", "5", "--n-test", "6", *lengths]
    ensure_generated("listops", tmp_path, small)
    first = sizes()
    mtime = (tmp_path / "listops-1000" / "basic_test.tsv").stat().st_mtime_ns
    assert ensure_generated("listops", tmp_path, small).endswith(" ".join(small))
    assert (tmp_path / "listops-1000" / "basic_test.tsv").stat().st_mtime_ns == mtime
    # the number of processes is no property of the data: the set is kept
    ensure_generated("listops", tmp_path, [*small, "--workers", "16"])
    assert (tmp_path / "listops-1000" / "basic_test.tsv").stat().st_mtime_ns == mtime
    bigger = ["--n-train", "20", "--n-val", "5", "--n-test", "9", *lengths]
    assert ensure_generated("listops", tmp_path, bigger).endswith(" ".join(bigger))
    assert sizes()[2] - first[2] == 3  # the test split grew from 6 to 9 expressions
    assert "generated with other settings" in capsys.readouterr().out


def test_the_batchnorm_probe_differs_from_the_easy_probe_only_by_its_norm():
    easy, bn = runner.SETTINGS["pathfinder-easy"], runner.SETTINGS["pathfinder-easy-bn"]
    for key in ("data_dir", "data", "tasks", "max_steps", "budget_minutes"):
        assert bn[key] == easy[key], key
    assert bn["overrides"]["data"] == easy["overrides"]["data"]
    model = dict(bn["overrides"]["model"]["model"])
    assert model.pop("norm") == "batchnorm"
    assert model == easy["overrides"]["model"]["model"]


@pytest.mark.parametrize("mixer", ["s4d", "attention", "gdn"])
def test_the_batchnorm_probe_runs_are_its_sweeps_runs_at_the_config_rate(mixer):
    """`pathfinder-easy-bn` is the CPU Pathfinder row with the sweep; its earlier `--no-sweep`
    runs (the config's rate, seed 0, or seed 1 through ``--set seed_everything=1``) must carry the
    store keys of the sweep's runs at that rate, or the sweep would train them again."""
    from lra.leaderboard import sweep

    name = "pathfinder-easy-bn"
    overrides = runner.SETTINGS[name]["overrides"]
    probe = _config(name, "pathfinder", mixer, overrides)
    lr = probe["model"]["lr"]
    assert lr in sweep.rates_for(mixer)
    for seed in sweep.PROTOCOL.seeds:
        seeded = _config(name, "pathfinder", mixer,
                         runner.deep_merge(overrides, {"seed_everything": seed}))
        swept = _config(name, "pathfinder", mixer, runner.with_lr_seed(overrides, lr, seed))
        # the sweep's cell key (run_grid: the config as the setting makes it), the probe's
        # record and the sweep's record must agree
        assert (runner.config_fingerprint(seeded) == runner.config_fingerprint(swept)
                == runner.config_fingerprint(probe))
        assert seeded["seed_everything"] == swept["seed_everything"] == seed


def test_the_cpu_setting_leaves_pathfinder_to_the_batchnorm_probe():
    cpu = runner.SETTINGS["cpu"]
    assert cpu["tasks"] == ["listops"]
    assert "pathfinder-easy-bn" in cpu["about"]
    assert "pathfinder" in runner.SETTINGS["pathfinder-easy-bn"]["tasks"]


@pytest.mark.parametrize("name", [n for n, s in runner.SETTINGS.items() if s.get("command")])
def test_a_settings_command_parses_names_it_and_the_page_says_how_it_shares_the_cpu(name):
    """The page prints each setting's command and, beside it, how many runs it starts at a time
    with how many threads each; both must be the command's own, not a fixed sentence."""
    from lra.leaderboard import build_parser
    from lra.leaderboard.render import settings_section

    cmd = runner.SETTINGS[name]["command"]
    assert cmd.startswith("lra leaderboard ")
    args = build_parser().parse_args(cmd.split()[2:])
    assert args.setting == name
    line = next(x for x in settings_section() if x.startswith(f"- `{name}`:"))
    words = {1: "one", 2: "two"}
    threads = args.threads or 1  # a setting's runs default to one thread
    plural = "s" if threads > 1 else ""
    how = (f"{words[args.jobs]} runs at a time, {words[threads]} thread{plural} each"
           if args.jobs > 1 else f"one run at a time with {words[threads]} thread{plural}")
    assert f"`{cmd}` ({how};" in line


def test_listops_at_lra_lengths_runs_one_run_at_a_time_on_both_cores():
    """Two single-thread runs side by side make 2.1 s steps and stop at the 60-minute cap
    before step 2000; the command the page gives must not start two."""
    from lra.leaderboard import build_parser

    args = build_parser().parse_args(runner.SETTINGS["listops-lra"]["command"].split()[2:])
    assert (args.jobs, args.threads) == (1, 2)
    assert set(args.mixers) == {"s4d", "s4"}
