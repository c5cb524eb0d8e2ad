"""``tiec calibrate``: the Pareto front, the quick search end to end, the configuration it writes."""

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tiec
from tiec import load_config
from tiec.calibrate import pareto_front, recommend
from tiec.calibrate.candidates import neighbours as schedule_neighbours
from tiec.cli import main


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(-50, 50)), min_size=1, max_size=30))
def test_the_front_is_exactly_the_points_nothing_beats(points):
    front = set(pareto_front(points))
    for i, (cost, score) in enumerate(points):
        beaten = any((c <= cost and s > score) or (c < cost and s >= score) for c, s in points)
        duplicate_first = any(points[j] == points[i] for j in range(i))  # ties keep one representative
        assert (i in front) == (not beaten and not duplicate_first), (i, points)


def test_neighbours_move_or_drop_one_key_and_keep_step_0():
    neighbours = schedule_neighbours((0, 3, 6), 10)
    assert (0, 3) in neighbours and (0, 1, 6) in neighbours and (0, 3, 8) in neighbours
    assert all(n[0] == 0 and len(set(n)) == len(n) and max(n) < 10 for n in neighbours)
    assert (0, 3, 6) not in neighbours and (3, 6) not in neighbours


class Synthetic:
    """A stand-in evaluator whose PSNR and MACs are set per combination, so the search's choices can
    be checked: an encoder pass costs 10 at depth 8 and 1 at depth 4, a decoder pass 1; `lookahead`
    pays for its PSNR with a second encoder pass per key; `hold` is dominated at each depth."""

    policies = ("hold", "linear", "lookahead")
    name, guidance_scale, depth_option, default_depth = "synthetic-ddim", 2.0, "encoder_blocks", 8

    def __init__(self, *args, **kwargs):
        self.evaluations = 0

    def depths(self, quick):
        return [4, 8]

    def inputs(self, count, *, held_out):
        return count

    def images(self, candidate, inputs, steps=None):
        self.evaluations += 1
        if steps is not None:  # fewer steps
            db, macs = 10 + 2 * steps, 11 * steps
        elif len(candidate.keys) == 10:  # the reference
            return torch.zeros(inputs, 1, 2, 2), 110
        else:
            passes = len(candidate.keys) * (2 if candidate.policy == "lookahead" else 1)
            db = ({"hold": 20, "linear": 25, "lookahead": 30}[candidate.policy] + 5 * (candidate.depth == 8)
                  + 2 * len(candidate.keys) + {"log_sigma": 0.1, "step": 0.2}.get(candidate.coordinate, 0.0))
            macs = (10 if candidate.depth == 8 else 1) * passes + 10
        return torch.full((inputs, 1, 2, 2), math.sqrt(10 ** (-db / 10))), macs


def test_stage_1_carries_each_probe_fronts_cheap_plain_blend(monkeypatch):
    """The shallow split ranks below every lookahead at depth 8 and below `linear` at depth 8 (the
    plain blend carried today), but it is the best at its MACs on each probe schedule, so stage 2
    searches its schedules too, and the cheapest front point is `linear` at depth 4."""
    monkeypatch.setattr("tiec.calibrate.search.DemoEvaluator", Synthetic)
    results = tiec.calibrate.calibrate("dit-digits", "ddim", steps=10, calibration=2, held_out=2, progress=False)
    carried = [tuple(combo) for combo in results["policy_rank"]]
    assert carried[:3] == [("lookahead", "step", 8), ("lookahead", "log_sigma", 8), ("lookahead", "t", 8)]
    assert ("linear", "step", 4) in carried and ("hold", "step", 4) not in carried
    cheapest = min((r for r in results["candidates"] if r["front"]), key=lambda r: r["macs"])
    assert (cheapest["policy"], cheapest["depth"]) == ("linear", 4)


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


def test_each_front_point_is_compared_with_the_uniform_grids_and_fewer_steps(quick):
    out, results = quick
    rows = results["candidates"]
    benchmark = [r for r in rows if "benchmark" in r["grids"]]
    assert {r["policy"] for r in benchmark} == {"hold", "linear"} and {r["coordinate"] for r in benchmark} == {"auto"}
    assert all("held_out_psnr_db" in r for r in rows if r["grids"] or r["front"])
    comparison = results["front_comparison"]
    assert len(comparison) == sum(r["front"] for r in rows)
    for point in comparison:
        macs = next(r["macs"] for r in rows if r["front"] and (r["keys"], r["policy"]) == (point["keys"], point["policy"]))
        cheaper = [r["held_out_psnr_db"] for r in rows if r["grids"] and r["macs"] <= macs]
        matched = math.floor(results["steps"] * point["mac_ratio"] + 1e-9)  # the most steps within its MACs
        assert matched < 1 or matched >= results["steps"] or matched in {f["steps"] for f in results["fewer_steps"]}
        best = point["best_uniform"]
        if best is None:
            assert not cheaper and point["margin_over_uniform_db"] is None
            continue
        assert best["grids"] and best["macs"] <= macs and best["held_out_psnr_db"] == max(cheaper)
        assert point["margin_over_uniform_db"] == pytest.approx(point["held_out_psnr_db"] - best["held_out_psnr_db"])
    table, _, fitted = (out / "dit-digits-ddim-quick-calibration.md").read_text().partition("Fitted weights")
    assert table.count("\n| 0.") == len(comparison) and results["command"] in table
    assert fitted.count("\n| 0.") == len(results["fitted"])


def test_fitted_weights_are_weighed_on_held_out_inputs(quick):
    _, results = quick
    assert results["fitted"], "the quick search fits the would-be pick's schedule and keys every 3"
    for row in results["fitted"]:
        assert row["policy"] == "fitted" and row["coordinate"] == "t" and row["chosen"] in row["candidates"]
        assert row["held_out_psnr_db"] == max(row["candidates"].values())
        tiec.Fitted.from_list(row["weights"])
    # a fitted candidate that beats the pick on held-out inputs at no more MACs becomes the config
    pick = results["recommended"]
    rival = dict(results["fitted"][0], macs=pick["macs"], mac_ratio=pick["mac_ratio"],
                 held_out_psnr_db=pick["held_out_psnr_db"] + 1.0)
    again = recommend({**results, "fitted": [rival]}, results["budget"])
    config = tiec.TiecConfig.from_dict(again["config"])
    assert config.policy == "fitted" and config.blend_policy() == tiec.Fitted.from_list(rival["weights"])
    worse = dict(rival, held_out_psnr_db=pick["held_out_psnr_db"] - 1.0)
    assert recommend({**results, "fitted": [worse]}, results["budget"])["config"]["policy"] == pick["policy"]


def test_the_calibrated_config_runs_in_generate(quick, tmp_path):
    out, _ = quick
    assert main(["generate", "--config", str(out / "dit-digits-ddim-quick-config.json"), "--steps", "10",
                 "--class-labels", "1", "--quiet", "--no-count-macs", "--out", str(tmp_path)]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--budget", "1.5"], "--budget 1.5 is not a MAC ratio in (0, 1]"),
    (["--budget", "nan"], "--budget nan is not a MAC ratio in (0, 1]"),
    (["--time-budget", "nan"], "--time-budget nan must be a positive number of seconds"),
    (["--time-budget", "0"], "--time-budget 0.0 must be a positive number of seconds"),
    (["--out", ""], "--out '' is empty"),
])
def test_bad_calibration_input(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--quiet", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


# --- diffusers pipelines saved in a folder ---------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    import saved_pipelines

    root = tmp_path_factory.mktemp("pipelines")
    return {"sd": saved_pipelines.sd(root), "dit": saved_pipelines.dit(root)}


def test_quick_calibration_of_a_stable_diffusion_folder(saved, tmp_path):
    assert main(["calibrate", "--model", str(saved["sd"]), "--prompt", "a red cat", "--prompt", "a blue dog",
                 "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "sd-own-quick-calibration.json").read_text())
    config = load_config(tmp_path / "sd-own-quick-config.json")
    assert results["model"] == str(saved["sd"]) and results["sampler"] is None and results["steps"] == 10
    assert config.decoder_start == results["recommended"]["depth"] and config.encoder_blocks is None
    assert {row["policy"] for row in results["candidates"]} <= {"hold", "linear"}
    assert all(0 < row["mac_ratio"] < 1 for row in results["fewer_steps"])
    assert (tmp_path / "sd-own-quick-calibration.png").stat().st_size > 0
    out = tmp_path / "generated"
    assert main(["generate", "--model", str(saved["sd"]), "--prompt", "a red cat", "--steps", "10",
                 "--config", str(tmp_path / "sd-own-quick-config.json"), "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "record.json").read_text())["key_steps"] == results["recommended"]["keys"]


def test_pipeline_macs_follow_from_the_encoder_calls_exactly(saved):
    """The evaluator predicts a candidate's MACs from two counted runs; a third counted run agrees."""
    from tiec.calibrate import Candidate
    from tiec.calibrate.evaluators import PipelineEvaluator
    from tiec.flops import count_flops

    evaluator = PipelineEvaluator(saved["dit"], "ddim", 6, class_labels="1,2", progress=False)
    blocks = len(evaluator.job.pipe.transformer.transformer_blocks)
    assert evaluator.depth_option == "encoder_blocks" and evaluator.depths(quick=False)[-1] == blocks
    candidate = Candidate((0, 2, 5), "linear", "log_sigma", 1)
    _, predicted = evaluator.images(candidate, [0])
    flops, images = count_flops(evaluator._run, candidate, [0], 6)
    assert images.encoder_calls == 3 and predicted == flops // 2
    assert evaluator.images(Candidate(tuple(range(6)), "hold", "t", 1), [0])[1] > predicted


def test_shallow_branch_candidates_count_their_macs_and_become_configs(saved):
    """Calibration searches UNet shallow branches beside decoder_start (issue #21): a branch
    candidate's predicted MACs equal a counted run's, on a pipeline and on the demo UNet."""
    from tiec.calibrate import Candidate
    from tiec.calibrate.evaluators import DemoEvaluator, PipelineEvaluator
    from tiec.flops import count_flops

    evaluator = PipelineEvaluator(saved["sd"], "ddim", 6, prompts=["a red cat"], progress=False)
    outer = 1 + len(evaluator.job.pipe.unet.down_blocks[0].resnets)  # conv_in and the first block's layers
    assert evaluator.depths(quick=False)[-2:] == ["branch:1", f"branch:{outer}"]  # finest cut, outermost block
    candidate = Candidate((0, 3), "linear", "step", "branch:1")
    _, predicted = evaluator.images(candidate, [0])
    flops, images = count_flops(evaluator._run, candidate, [0], 6)
    assert images.encoder_calls == 2 and predicted == flops // 2
    deep = evaluator.images(Candidate((0, 3), "linear", "step", 0), [0])[1]
    assert predicted < deep  # a non-key step runs conv_in and the last up layer, not every up block
    config = candidate.config(6, depth_option="decoder_start")
    assert config.branch_depth == 1 and config.decoder_start is None

    demo = DemoEvaluator("unet-digits", "ddim", 6)
    assert demo.depths(quick=False) == [0, 1, "branch:1", "branch:2"]
    candidate = Candidate((0, 3), "linear", "step", "branch:2")
    inputs = demo.inputs(2, held_out=False)
    demo.macs(candidate, 0, 0)  # counts one call of each part, outside the counted run below
    flops, (_, predicted) = count_flops(demo.images, candidate, inputs)
    assert predicted == flops // 2 // 2  # MACs per image, of two images
    with pytest.raises(ValueError, match="a split depth is an int or 'branch:<layers>', got 'deep:1'"):
        Candidate((0,), "linear", "t", "deep:1").config(6, depth_option="decoder_start")


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "x"], "--prompt does not apply to the demo model 'dit-digits'"),
    (["--sampler", "euler"], "--sampler 'euler' does not apply to the demo model"),
    (["--model", "no/such/folder"], "--model 'no/such/folder' is neither a demo model"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--device", "cuda:7"], "--device 'cuda:7'"),
])
def test_bad_calibration_options_are_named(capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--quiet", "--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_text_pipeline_needs_a_prompt(saved, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--model", str(saved["sd"]), "--quick", "--quiet", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--prompt is required for a StableDiffusionPipeline" in capsys.readouterr().err


def test_a_finished_search_is_picked_again_for_another_budget(quick, tmp_path, capsys):
    out, results = quick
    assert main(["calibrate", "--from-results", str(out / "dit-digits-ddim-quick-calibration.json"),
                 "--budget", "1.0", "--out", str(tmp_path)]) == 0
    assert "recommended within 1.0 of the MACs" in capsys.readouterr().out
    again = json.loads((tmp_path / "dit-digits-ddim-quick-calibration.json").read_text())
    front = [r for r in results["candidates"] if r["front"]]
    assert again["recommended"] == max(front, key=lambda r: r["psnr_db"]) and again["budget"] == 1.0
    assert again["candidates"] == results["candidates"]  # no new search
    config = load_config(tmp_path / "dit-digits-ddim-quick-config.json")
    assert config.provenance["command"] == results["command"] and "--from-results" in config.provenance["picked_by"]
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--from-results", str(tmp_path / "missing.json"), "--quiet", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--from-results" in capsys.readouterr().err
