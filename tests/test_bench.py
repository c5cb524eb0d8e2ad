"""``tiec bench``: the quick grid end to end, the fewer-steps matching, the speed table."""

import json

import pytest

from tiec import TiecConfig
from tiec.bench import Method, bench_speed, fewer_steps, markdown_table, method_grid
from tiec.cli import main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    config = TiecConfig(keys="0,4,8", policy="linear", encoder_blocks=4).save(out / "half-stack.json")
    assert main(["bench", "--quick", "--quiet", "--out", str(out), "--config", str(config)]) == 0
    return out, json.loads((out / "dit-digits-ddim-quick.json").read_text())


def test_quick_bench_writes_json_markdown_and_plot(quick):
    out, results = quick

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    json.loads((out / "dit-digits-ddim-quick.json").read_text(), parse_constant=refuse)  # jq reads it
    assert results["command"] == f"tiec bench --quick --quiet --out {out} --config {out / 'half-stack.json'}"
    assert (out / "dit-digits-ddim-quick.png").stat().st_size > 0
    table = (out / "dit-digits-ddim-quick.md").read_text()
    for row in results["rows"]:
        assert row["name"] in table
    assert "| ∞ |" in table  # the reference's PSNR, read back from null and its flag
    assert all(row["key_error"] is None or 0 <= row["key_error"] for row in results["rows"])
    assert any(row["key_error"] for row in results["rows"] if row["family"] == "tiec")  # the quality monitor
    # the table ends with the budget table, computed from the rows
    budgets = [line for line in table.splitlines() if line.startswith("| 0.")]
    assert [line.split(" | ")[0] for line in budgets] == ["| 0.20", "| 0.30", "| 0.40", "| 0.50", "| 0.60"]
    for line in budgets:
        budget = float(line.split(" | ")[0][2:])
        ours = [r["psnr_db"] for r in results["rows"] if r["family"] in ("tiec", "fitted", "branch", "configured")
                and r["psnr_db"] is not None and r["mac_ratio"] <= budget * 1.01]
        theirs = [r["psnr_db"] for r in results["rows"] if r["family"] in ("fewer-steps", "fasterdiffusion", "peer")
                  and r["psnr_db"] is not None and r["mac_ratio"] <= budget * 1.01]
        margin = line.split(" | ")[-1].rstrip(" |")
        assert margin == ("–" if not ours or not theirs else f"{max(ours) - max(theirs):+.1f}"), line


def test_quick_bench_rows_are_measured(quick):
    _, results = quick
    rows = {row["name"]: row for row in results["rows"]}
    reference = rows["reference (every step a key)"]
    # strict JSON: an infinite PSNR is null with a flag (tiec._files.json_text)
    assert reference["psnr_db"] is None and reference["psnr_db_is_infinite"] is True
    assert reference["mac_ratio"] == 1.0 and reference["accuracy"] == 1.0
    assert not [row for row in results["rows"] if row["error"]]
    families = {row["family"] for row in results["rows"]}
    assert families == {"reference", "fasterdiffusion", "tiec", "fitted", "configured", "peer", "fewer-steps"}
    linear, hold = rows["TIEC linear, keys every:3"], rows["FasterDiffusion hold, keys every:3"]
    assert linear["macs_per_image"] == hold["macs_per_image"] < reference["macs_per_image"]
    assert (linear["encoder_calls"], linear["decoder_calls"]) == (4, 10)
    lookahead = rows["TIEC lookahead, keys every:3"]
    assert lookahead["encoder_calls"] == 7 and lookahead["macs_per_image"] > linear["macs_per_image"]
    assert 0 < linear["psnr_db"] < 100 and 0 < linear["ssim"] < 1 and linear["frechet_distance"] > 0
    fitted = rows["TIEC fitted, keys every:3"]  # fitted on other inputs, counted as its linear twin
    assert (fitted["macs_per_image"], fitted["encoder_calls"]) == (linear["macs_per_image"], 4)
    scores = fitted["fit"]["held_out_psnr_db"]
    assert {"hold", "linear", "teacher forcing"} <= set(scores) and scores[fitted["fit"]["chosen"]] == max(scores.values())
    assert 0 < fitted["psnr_db"] < 100 and fitted["coordinate"] == "t"
    parallel = rows["TIEC linear, keys every:3, parallel decoding"]
    assert parallel["psnr_db"] is None and len(parallel["seconds"]) == 1  # wall time only
    configured = rows["configured (half-stack): keys 0,4,8, linear"]
    assert configured["split_depth"] == 4 and configured["encoder_calls"] == 3
    assert configured["macs_per_image"] > linear["macs_per_image"] * 3 / 4  # half the stack runs every step
    for row in results["rows"]:
        if row["family"] == "fewer-steps":
            assert row["encoder_calls"] == row["decoder_calls"] == row["steps"] < 10


def test_fewer_steps_match_the_macs_of_each_cached_run():
    cached = [(Method("a", "tiec", 50, "every:3"), 340), (Method("b", "fasterdiffusion", 50, "every:3"), 340),
              (Method("c", "peer", 50), 820), (Method("d", "tiec", 50, quality=False), 100)]
    assert [m.steps for m in fewer_steps(cached, 1000, 50)] == [17, 41]  # wall-time rows do not count


def test_the_full_grid_has_every_method_the_issue_names():
    names = [m.name for m in method_grid("ddim", model="dit-digits")]
    for keys in ("ddim-50", "every:2", "every:3", "every:5"):
        for method in ("FasterDiffusion hold", "TIEC linear", "TIEC polynomial(2)", "TIEC lookahead",
                       "TIEC lookahead-accept"):
            assert f"{method}, keys {keys}" in names
    assert any("noise injection" in n for n in names) and any("parallel decoding" in n for n in names)
    assert any(n.startswith("DeepCache") for n in (m.name for m in method_grid("dpm", model="unet-digits")))


def test_the_unet_grids_have_the_shallow_branch_rows_and_the_dit_grids_do_not():
    from tiec.bench.grid import part_filter

    for sampler in ("ddim", "dpm"):
        grid = method_grid(sampler, model="unet-digits")
        branch = [m for m in grid if m.family == "branch"]
        assert {(m.branch_depth, m.keys, m.policy) for m in branch} == {
            (d, f"every:{k}", p) for d in (1, 2) for k in (2, 3, 5) for p in ("hold", "linear", "lookahead-accept")
        } | {(1, f"every:{k}", "fitted") for k in (2, 3, 5)}  # weights fitted for the finest cut
        coordinates = {"lookahead-accept": "auto", "fitted": "t"}
        assert all(m.coordinate == coordinates.get(m.policy, "step") for m in branch)
        assert part_filter("branch/every:5/fitted", grid)(next(m for m in branch if m.policy == "fitted"
                                                                and m.keys == "every:5"))
        keep = part_filter("branch/every:3/linear", grid)
        assert [m.branch_depth for m in grid if keep(m)] == [1, 2]
        assert not any(m.family == "branch" for m in method_grid(sampler, model="dit-digits"))


def test_a_peer_that_fails_gets_a_row_with_its_error(monkeypatch):
    import tiec.bench.peers as peers
    from tiec.bench import bench_demo

    def broken(*args, **kwargs):
        raise RuntimeError("the hook does not fit\nsecond line")

    monkeypatch.setattr(peers, "_diffusers_hook", broken)
    methods = [Method("reference (every step a key)", "reference", 3),
               Method("broken peer", "peer", 3, peer="taylorseer")]
    results = bench_demo(num_samples=4, timing_batch=2, repeats=1, methods=methods, progress=False)
    row = results["rows"][1]
    assert row["error"] == "RuntimeError: the hook does not fit second line"
    assert "could not run: `RuntimeError: the hook does not fit second line`" in markdown_table(results)


def test_speed_rows_carry_the_mac_bound(monkeypatch):
    from tiny_arch import tiny_full_size

    import tiec.bench.speed as speed

    monkeypatch.setattr(speed, "_full_size", tiny_full_size)
    results = bench_speed("dit-xl-2", steps=6, repeats=1, progress=False)
    rows = {row["name"]: row for row in results["rows"]}
    assert rows["reference (every step a key)"]["mac_bound"] == pytest.approx(1.0)
    every3 = rows["TIEC linear, keys every:3"]
    share = every3["encoder_share"]
    assert every3["mac_bound"] == pytest.approx(1 / (1 - share * (1 - 2 / 6)))  # keys 0 and 3 of 6
    assert rows["TIEC lookahead, keys every:3"]["encoder_calls"] == 4  # keys 0, 3 + predicted keys 3 and 5 (the last step)
    assert "MAC bound" in markdown_table(results)
    timed = sum(row["seconds_per_step_median"] * 6 for row in results["rows"])  # one run of 6 steps a row
    assert 0 < timed <= results["seconds"] + 0.05  # the whole run, rounded to 0.1 s


def test_speed_rows_of_the_shallow_branch_count_its_refresh_and_report_the_cache(monkeypatch):
    from tiny_arch import tiny_full_size

    import tiec.bench.speed as speed

    monkeypatch.setattr(speed, "_full_size", tiny_full_size)
    results = bench_speed("sd15-unet", steps=6, repeats=1, progress=False)
    rows = {row["name"]: row for row in results["rows"]}
    deep, branch = rows["TIEC linear, keys every:3"], rows["TIEC branch 1 (finest cut) linear, keys every:3"]
    assert branch["refresh_calls"] == 4 and deep["refresh_calls"] == 0  # the non-key steps of 6
    saved = branch["saved_share"]
    assert 0 < saved < branch["encoder_share"]  # a non-key step still runs conv_in
    assert branch["mac_bound"] == pytest.approx(1 / (1 - saved * (1 - 2 / 6)))
    assert deep["saved_share"] == deep["encoder_share"]
    # The branch caches one deep feature, the deep split every skip: both at the two keys linear keeps.
    assert 0 < branch["cache_bytes"] < deep["cache_bytes"]
    assert rows["FasterDiffusion hold, keys every:3"]["cache_bytes"] == deep["cache_bytes"] // 2
    assert "| cache MB |" in markdown_table(results)
    splits = {(row["split"], row["latent"]): row for row in results["splits"]}
    assert set(splits) == {(name, latent) for latent in (32, 64)
                           for name in ("decoder_start=0", "decoder_start=1", "branch_depth=1", "branch_depth=3")}
    for latent in (32, 64):  # the finest cut saves more per non-key step and caches less than the deep split
        finest, deep = splits[("branch_depth=1", latent)], splits[("decoder_start=0", latent)]
        assert finest["saved_share"] > deep["saved_share"] and finest["cache_bytes"] < deep["cache_bytes"]
        assert finest["key_step_macs"] == deep["key_step_macs"] > finest["non_key_step_macs"]
    assert "| branch_depth=1 | 512 px |" in markdown_table(results)


def test_bad_bench_input(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--num-samples", "0", "--quiet"])
    assert exit_info.value.code == 2
    assert "--num-samples must be >= 1, got 0" in capsys.readouterr().err



def test_a_grid_run_in_parts_is_joined_and_reuses_the_reference(tmp_path):
    argv = ["bench", "--quick", "--quiet", "--out", str(tmp_path)]
    assert main([*argv, "--part", "tiec"]) == 0
    cached = list((tmp_path / ".cache").glob("*reference.safetensors"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert main([*argv, "--part", "peers"]) == 0
    assert cached[0].stat().st_mtime_ns == stamp  # the second piece read the reference from the cache
    joined = json.loads((tmp_path / "dit-digits-ddim-quick.json").read_text())
    families = [row["family"] for row in joined["rows"]]
    assert families[0] == "reference" and families.count("reference") == 1
    assert set(families) == {"reference", "tiec", "peer"} and families.index("tiec") < families.index("peer")
    tiec_piece = json.loads((tmp_path / "dit-digits-ddim-quick-part-tiec.json").read_text())
    assert {row["family"] for row in tiec_piece["rows"]} == {"reference", "tiec"}
    assert joined["rows"][0]["psnr_db"] is None and joined["rows"][0]["psnr_db_is_infinite"]


def test_the_configured_part_runs_only_the_configuration_rows(tmp_path):
    config = TiecConfig(keys="0,4,8", policy="hold", encoder_blocks=8).save(tmp_path / "calibrated.json")
    argv = ["bench", "--quick", "--quiet", "--out", str(tmp_path), "--config", str(config)]
    assert main([*argv, "--part", "configured"]) == 0
    piece = json.loads((tmp_path / "dit-digits-ddim-quick-part-configured-calibrated.json").read_text())
    assert [row["family"] for row in piece["rows"]] == ["reference", "configured"]
    assert piece["rows"][1]["encoder_calls"] == 3 and piece["rows"][1]["psnr_db"] > 0
    assert main([*argv, "--part", "fewer-steps"]) == 0  # its matched step count is among the fewer-steps rows
    joined = json.loads((tmp_path / "dit-digits-ddim-quick.json").read_text())
    fewer = {row["steps"] for row in joined["rows"] if row["family"] == "fewer-steps"}
    assert round(10 * piece["rows"][1]["mac_ratio"]) in fewer
    # Another file is a piece of its own: the joined grid keeps the first file's row beside it.
    other = TiecConfig(keys="0,5", policy="linear", encoder_blocks=8).save(tmp_path / "sparse.json")
    assert main(["bench", "--quick", "--quiet", "--out", str(tmp_path), "--config", str(other),
                 "--part", "configured"]) == 0
    joined = json.loads((tmp_path / "dit-digits-ddim-quick.json").read_text())
    assert [row["name"] for row in joined["rows"] if row["family"] == "configured"] == [
        "configured (calibrated): keys 0,4,8, hold", "configured (sparse): keys 0,5, linear"]


def test_deepcache_runs_from_its_own_package_on_the_demo_unet():
    """The UNet's peer row: DeepCache's helper on a StableDiffusionPipeline around the demo UNet.
    Interval 1 recomputes every step, so it must equal the reference; interval 3 must not."""
    pytest.importorskip("DeepCache")
    from tiec.bench import bench_demo

    methods = [Method("reference (every step a key)", "reference", 6)]
    methods += [Method(f"DeepCache, interval {k}", "peer", 6, peer="deepcache",
                       peer_options=(("cache_interval", k), ("cache_branch_id", 0))) for k in (1, 3)]
    results = bench_demo("unet-digits", num_samples=4, timing_batch=2, repeats=1, methods=methods, progress=False)
    reference, every, sparse = results["rows"]
    assert every["error"] is None and sparse["error"] is None, (every["error"], sparse["error"])
    # Same images; the MACs differ only by the time embedding, which the pipeline runs per image
    # and tiec's split once per call.
    assert every["psnr_db"] == float("inf")
    assert every["macs_per_image"] == pytest.approx(reference["macs_per_image"], rel=1e-3)
    assert 0 < sparse["psnr_db"] < 100 and sparse["macs_per_image"] < reference["macs_per_image"]


def test_a_family_is_cut_into_key_sets_and_rows_count_once(tmp_path):
    argv = ["bench", "--quick", "--quiet", "--out", str(tmp_path)]
    assert main([*argv, "--part", "tiec/every:3"]) == 0
    piece = json.loads((tmp_path / "dit-digits-ddim-quick-part-tiec-every3.json").read_text())
    assert {row["keys"] for row in piece["rows"][1:]} == {"every:3"} and piece["part"] == "tiec/every:3"
    assert main([*argv, "--part", "tiec"]) == 0  # the whole family again: the joined grid lists each row once
    joined = json.loads((tmp_path / "dit-digits-ddim-quick.json").read_text())
    names = [row["name"] for row in joined["rows"]]
    assert len(names) == len(set(names)) and len(joined["pieces"]) == 2


def test_a_key_set_is_cut_by_policy_and_the_piece_file_name_is_plain(tmp_path):
    argv = ["bench", "--quick", "--quiet", "--out", str(tmp_path)]
    assert main([*argv, "--part", "tiec/every:3/linear"]) == 0
    piece = json.loads((tmp_path / "dit-digits-ddim-quick-part-tiec-every3-linear.json").read_text())
    names = [row["name"] for row in piece["rows"]]
    assert names == ["reference (every step a key)", "TIEC linear, keys every:3",
                     "TIEC linear, keys every:3, parallel decoding"]
    assert main([*argv, "--part", "tiec/every:3/lookahead"]) == 0
    joined = json.loads((tmp_path / "dit-digits-ddim-quick.json").read_text())
    assert {row["policy"] for row in joined["rows"][1:]} == {"linear", "lookahead"}


def test_the_fewer_steps_rows_are_cut_by_step_count(tmp_path):
    argv = ["bench", "--quick", "--quiet", "--out", str(tmp_path)]
    assert main([*argv, "--part", "fewer-steps/1-7"]) == 0
    assert main([*argv, "--part", "fewer-steps/8-9"]) == 0
    low, high = (json.loads((tmp_path / f"dit-digits-ddim-quick-part-fewer-steps-{cut}.json").read_text())
                 for cut in ("1-7", "8-9"))
    low_steps = [row["steps"] for row in low["rows"][1:]]
    high_steps = [row["steps"] for row in high["rows"][1:]]
    assert low_steps and high_steps and max(low_steps) <= 7 and min(high_steps) >= 8
    assert {row["family"] for row in low["rows"][1:] + high["rows"][1:]} == {"fewer-steps"}
    assert main([*argv, "--part", "fewer-steps"]) == 0  # the same rows uncut
    whole = json.loads((tmp_path / "dit-digits-ddim-quick-part-fewer-steps.json").read_text())
    assert sorted(low_steps + high_steps) == sorted(row["steps"] for row in whole["rows"][1:])


@pytest.mark.parametrize("part, message", [
    ("tiec/every:4", "the tiec rows of this grid have the key sets ['every:3'], not 'every:4'"),
    ("nonsense", "part 'nonsense' is unknown"),
    ("tiec//linear", "the tiec rows of this grid have the key sets ['every:3'], not ''"),
    ("tiec/every:3/hold", "the tiec rows on keys every:3 have the policies ['linear', 'lookahead'], not 'hold'"),
    ("fewer-steps/9-2", "cut the fewer-steps rows by step count, as fewer-steps/A-B (A <= B)"),
    ("fewer-steps/every:3", "got 'every:3'"),
    ("peers/nope", "the peers of this grid are ['first-block-cache', 'taylorseer'], not 'nope'"),
    ("configured", "--part configured runs the rows of --config files; pass at least one --config FILE"),
    ("fewer-steps/40-49", "part 'fewer-steps/40-49' selects no rows; the fewer-steps rows of this grid have the "
                          "step counts [")
])
def test_a_bad_part_is_named(capsys, tmp_path, part, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick", "--quiet", "--out", str(tmp_path), "--part", part])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
