"""The over-optimisation study: a smoke run end to end (proxies, best-of-n, PPO arms, fits,
report), its resume, the split over workers, the RL binning, config errors; and (slow) the
default study's fits."""

import dataclasses
import importlib.util
import json

import numpy as np
import pytest
from test_pipeline import ROOT

from rlhf_jax.synthetic import PPOStage
from rlhf_jax.synthetic import overoptimization as study_lib
from rlhf_jax.synthetic import overoptimization_report as report_lib
from rlhf_jax.training.config import build


def study_config(arg, run_dir, **changes) -> study_lib.StudyConfig:
    spec = importlib.util.spec_from_file_location("study", ROOT / "configs" / "overoptimization.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = build(study_lib.StudyConfig, module.get_config(arg).to_dict())
    # The study trains its own pretrain and SFT here (no shared default run in a test).
    pipeline = dataclasses.replace(config.pipeline, base_run_dir=None, console=False)
    return dataclasses.replace(
        config, run_dir=str(run_dir), pipeline=pipeline, console=False, **changes
    )


def micro(run_dir, **changes):
    small = {
        "widths": (64,),
        "data_sizes": (40, 100),
        "kl_coefs": (0.0,),
        "rl": PPOStage(iterations=4, prompts_per_iteration=16, prompts=128),
    }
    return study_config("smoke", run_dir, **{**small, **changes})


def test_smoke_study_runs_fits_reports_and_resumes(tmp_path):
    config = micro(tmp_path)
    result = study_lib.Study(config).run()
    assert result["status"] == "finished"
    report = json.loads((tmp_path / "report.json").read_text())
    assert [p["tag"] for p in report["proxies"]] == ["w64_n40", "w64_n100"]
    for proxy in report["proxies"]:
        bon, rl = proxy["bon"], proxy["rl"]["kl0"]
        assert len(bon["d"]) == config.bon_log2 + 1 and bon["d"][0] == 0.0
        assert bon["gold_gain"][0] == 0.0  # n = 1 is the SFT policy
        np.testing.assert_allclose(np.square(bon["d"]), [
            np.log(n) - (n - 1) / n for n in 2 ** np.arange(config.bon_log2 + 1)
        ], atol=1e-12)  # fmt: skip
        assert len(rl["d"]) == config.rl.iterations // config.rl_bin
        for fit in (bon["fit"], rl["fit"]):
            assert np.isfinite([fit["alpha"], fit["beta"], fit["r2"]]).all()
        assert 0.0 <= proxy["gold_accuracy"] <= 1.0
    md = (tmp_path / "report.md").read_text()
    assert "| w64 | 40 |" in md and "| w64 | 100 |" in md
    for png in ("curves_kl0.png", "scaling_kl0.png"):
        assert (tmp_path / png).stat().st_size > 5000
    history = (tmp_path / "rl" / "w64_n40_kl0" / "history.jsonl").read_text().splitlines()
    assert len(history) == 4 and "objective/gold" in json.loads(history[0])

    # A rerun trains nothing: every arm is found finished and the report is written again.
    finished = [*tmp_path.glob("proxies/*/artifact"), *tmp_path.glob("rl/*/artifact")]
    stamps = {p: p.stat().st_mtime_ns for d in finished for p in d.iterdir()}
    assert len(finished) == 4  # two proxies, two RL arms
    again = study_lib.Study(config).run()
    assert again["status"] == "finished"
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((tmp_path / "report.json").read_text())["proxies"] == report["proxies"]


def test_workers_split_the_arms_and_the_report_waits_for_all(tmp_path):
    studies = [study_lib.Study(micro(tmp_path, workers=2, worker=w)) for w in (0, 1)]
    mine = [[arm for arm in s.arms if s._mine(arm[1])] for s in studies]
    assert sorted(map(str, mine[0] + mine[1])) == sorted(map(str, studies[0].arms))
    assert not set(map(str, mine[0])) & set(map(str, mine[1]))
    # each worker owns whole proxies: the proxy and its RL arms
    assert [(k, p.tag) for k, p, _ in mine[1]] == [("proxy", "w64_n100"), ("rl", "w64_n100")]
    # Nothing finished yet: the report-only pass names what it waits for.
    waiting = study_lib.Study(micro(tmp_path, report_only=True)).run()
    assert waiting["status"] == "partial" and "w64_n40" in waiting["missing"]


def test_a_rerun_with_other_arm_settings_is_refused(tmp_path):
    study_lib.Study(micro(tmp_path))
    # where and how it runs may change: another worker split, report only, no console
    study_lib.Study(micro(tmp_path, workers=2, worker=1, report_only=True))
    with pytest.raises(ValueError, match=r"other data_sizes, reward_epochs .*study\.json"):
        study_lib.Study(micro(tmp_path, data_sizes=(40, 200), reward_epochs=3.0))
    with pytest.raises(ValueError, match=r"other pipeline\.seed \("):
        config = micro(tmp_path)
        study_lib.Study(
            dataclasses.replace(config, pipeline=dataclasses.replace(config.pipeline, seed=1))
        )
    # a record written before a field existed resumes: the field takes its default
    record = tmp_path / "study.json"
    old = json.loads(record.read_text())
    del old["reward_batch_size"], old["pipeline"]["model"]["qk_norm"]
    record.write_text(json.dumps(old))
    study_lib.Study(micro(tmp_path))


def test_rl_points_average_bins_of_iterations():
    history = [
        {"objective/kl": kl, "objective/gold": g, "objective/raw_scores": p}
        for kl, g, p in zip(
            [-0.1, 0.1, 1.0, 3.0, 9.0], [0, 2, 4, 6, 8], [1, 1, 2, 2, 5], strict=True
        )
    ]
    points = report_lib.rl_points(history, bin_size=2)  # the fifth iteration is left over
    np.testing.assert_allclose(points["kl"], [0.0, 2.0])  # a negative estimate clipped at 0
    np.testing.assert_allclose(points["gold"], [1.0, 5.0])
    np.testing.assert_allclose(points["proxy"], [1.0, 2.0])
    with pytest.raises(ValueError, match="fewer than two bins"):
        report_lib.rl_points(history, bin_size=3)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"data_sizes": ()}, "data_sizes"),
        ({"widths": (30,)}, "multiple of model.num_heads"),
        ({"kl_coefs": (-0.1,)}, "kl_coefs"),
        ({"worker": 2, "workers": 2}, "worker=2"),
        ({"bon_log2": 0}, "bon_log2"),
        ({"rl_bin": 3}, "rl_bin=3"),
    ],
)
def test_bad_study_configs_name_the_field(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        micro(tmp_path, **changes)


# ~90 min on 2 cores: under the test session's 8 fake CPU devices a PPO arm took ~5 min, against
# ~1.5 min in `experiments/overoptimization.py` (38 min for the whole study on one device)
@pytest.mark.slow
def test_default_study_fits_gaos_forms(tmp_path):
    """What the README reports of the default study (measured: BoN R² 0.968-0.996; α 0.106 →
    0.393 (w64) and 0.153 → 0.539 (w128) from 250 to 16000 pairs; the w128/16000 proxy's
    unpenalised PPO arm peaking at +0.163 and ending at +0.055, its KL-penalised arm +0.334)."""
    config = study_config(None, tmp_path)
    result = study_lib.Study(config).run()
    assert result["status"] == "finished"
    proxies = result["analysis"]["proxies"]
    for p in proxies:
        assert p["bon"]["fit"]["r2"] > 0.9, p["tag"]
        assert p["rl"]["kl0"]["observed_peak"]["passed"], p["tag"]
    by = {(p["width"], p["pairs"]): p for p in proxies}
    small, large = min(config.data_sizes), max(config.data_sizes)
    narrow, wide = min(config.widths), max(config.widths)
    for width in config.widths:
        # more preference data: a proxy that agrees more with gold, and best-of-n gains more,
        # faster (α) and for longer (the fitted peak d*)
        lo, hi = by[width, small], by[width, large]
        assert hi["gold_accuracy"] > lo["gold_accuracy"] + 0.1
        assert hi["bon"]["gold_gain"][-1] > lo["bon"]["gold_gain"][-1]
        assert hi["bon"]["fit"]["alpha"] > lo["bon"]["fit"]["alpha"] + 0.1
        assert hi["bon"]["fit"]["peak_d"] > lo["bon"]["fit"]["peak_d"]
    # a wider proxy at the same data: likewise
    assert by[wide, large]["bon"]["fit"]["alpha"] > by[narrow, large]["bon"]["fit"]["alpha"]
    # the best proxy: unpenalised PPO gains gold, then loses it; the KL penalty keeps a gain
    best = by[wide, large]["rl"]
    assert best["kl0"]["observed_peak"]["gold_gain"] > 0.05
    assert best["kl0"]["final"]["gold_gain"] < best["kl0"]["observed_peak"]["gold_gain"] - 0.05
    assert best["kl0.1"]["final"]["gold_gain"] > 0.15
    # the weakest proxy: PPO loses gold however it is penalised
    assert by[narrow, small]["rl"]["kl0"]["final"]["gold_gain"] < 0
