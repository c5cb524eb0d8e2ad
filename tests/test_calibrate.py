"""``tiec calibrate``: the Pareto front, the quick search end to end, the configuration it writes."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiec import load_config
from tiec.calibrate import _neighbours, pareto_front
from tiec.cli import main


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(-50, 50)), min_size=1, max_size=30))
def test_the_front_is_exactly_the_points_nothing_beats(points):
    front = set(pareto_front(points))
    for i, (cost, score) in enumerate(points):
        beaten = any((c <= cost and s > score) or (c < cost and s >= score) for c, s in points)
        duplicate_first = any(points[j] == points[i] for j in range(i))  # ties keep one representative
        assert (i in front) == (not beaten and not duplicate_first), (i, points)


def test_neighbours_move_or_drop_one_key_and_keep_step_0():
    neighbours = _neighbours((0, 3, 6), 10)
    assert (0, 3) in neighbours and (0, 1, 6) in neighbours and (0, 3, 8) in neighbours
    assert all(n[0] == 0 and len(set(n)) == len(n) and max(n) < 10 for n in neighbours)
    assert (0, 3, 6) not in neighbours and (3, 6) not in neighbours


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration")
    assert main(["calibrate", "--quick", "--quiet", "--out", str(out)]) == 0
    return out, json.loads((out / "dit-digits-ddim-quick-calibration.json").read_text())


def test_quick_calibration_writes_the_front_a_plot_and_a_config(quick):
    out, results = quick
    assert (out / "dit-digits-ddim-quick-calibration.png").stat().st_size > 0
    config = load_config(out / "dit-digits-ddim-quick-config.json")
    pick = results["recommended"]
    assert config.keys == ",".join(map(str, pick["keys"])) and config.policy == pick["policy"]
    assert config.encoder_blocks == pick["depth"] and config.steps == 10
    assert config.provenance["command"] == results["command"] and "--quick" in results["command"]
    assert pick["front"] and pick["mac_ratio"] <= results["budget"] and "held_out_psnr_db" in pick


def test_the_front_is_validated_on_held_out_inputs(quick):
    _, results = quick
    front = [row for row in results["candidates"] if row["front"]]
    assert front and all("held_out_psnr_db" in row for row in front)
    costs = [row["macs"] for row in sorted(front, key=lambda r: r["macs"])]
    scores = [row["psnr_db"] for row in sorted(front, key=lambda r: r["macs"])]
    assert costs == sorted(costs) and scores == sorted(scores)  # more MACs buy a better calibration PSNR
    assert [r["steps"] for r in results["fewer_steps"]] == sorted(r["steps"] for r in results["fewer_steps"])
    assert all(0 < r["mac_ratio"] < 1 for r in results["fewer_steps"])


def test_the_calibrated_config_runs_in_generate(quick, tmp_path):
    out, _ = quick
    assert main(["generate", "--config", str(out / "dit-digits-ddim-quick-config.json"), "--steps", "10",
                 "--class-labels", "1", "--quiet", "--no-count-macs", "--out", str(tmp_path)]) == 0


def test_bad_calibration_input(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--budget", "1.5", "--quiet"])
    assert exit_info.value.code == 2
    assert "--budget 1.5 is not a MAC ratio in (0, 1]" in capsys.readouterr().err
