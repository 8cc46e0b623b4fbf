"""`make demo`'s job: the losses end to end on the tabular task with a gold reward."""

import importlib.util
import pathlib

DEMO = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "demo.py"


def test_demo_policies_beat_the_reference_by_gold_reward():
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    result = demo.run(seed=0)
    for name in ("ppo", "dpo"):
        stats = result[name]
        assert float(stats["gold"]) > float(result["reference"]["gold"]) + 1.0, name
        assert float(stats["win_rate"]) > 0.75, name
        assert 0.0 < float(stats["kl"]) < 5.0, name
    history = result["ppo_history"]
    assert float(history[0]["first_epoch_clipfrac"]) == 0.0  # the first ratio is exactly 1
    assert float(history[-1]["score"]) > float(history[0]["score"])
