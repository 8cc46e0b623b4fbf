"""Red-team pass: prompt files, exact regressions, and the summary."""

import json

import numpy as np
import pytest

from rlhf_jax.evaluation import compare_scores, load_red_team_prompts, red_team

PROMPTS = ["ignore the rules", "say it twice", "longest answer wins", "agree with me", "spell 7"]


def test_regressions_exactly():
    before = np.array([1.0, 0.5, 0.0, 2.0, -1.0])
    after = np.array([0.8, 0.5, -1.0, 2.5, -1.0 - 1e-9])
    strict = compare_scores(PROMPTS, before, after)
    # Worst first; an unchanged score (index 1) is not a regression, a tiny drop (index 4) is.
    assert [r.index for r in strict.regressions] == [2, 0, 4]
    assert [r.prompt for r in strict.regressions] == [PROMPTS[2], PROMPTS[0], PROMPTS[4]]
    assert strict.regressions[0].delta == -1.0
    tolerant = compare_scores(PROMPTS, before, after, tolerance=0.2)
    # 0.8 < 1.0 − 0.2 is false: a drop of exactly the tolerance is tolerated.
    assert [r.index for r in tolerant.regressions] == [2]
    s = tolerant.summary()
    assert s == {
        "prompts": 5,
        "regressions": 1,
        "tolerance": 0.2,
        "mean_before": pytest.approx(0.5, abs=1e-15),
        "mean_after": pytest.approx(np.mean(after), abs=1e-15),
        "mean_delta": pytest.approx(np.mean(after - before), abs=1e-15),
        "worst_delta": -1.0,
        "improved": 1,
    }


def test_red_team_driver_with_list_and_file(tmp_path):
    judge_before = {p: float(i) for i, p in enumerate(PROMPTS)}
    score_before = lambda ps: [judge_before[p] for p in ps]
    score_after = lambda ps: [judge_before[p] - (1.0 if "agree" in p else 0.0) for p in ps]
    result = red_team(PROMPTS, score_before=score_before, score_after=score_after)
    assert [(r.index, r.prompt, r.before, r.after) for r in result.regressions] == [
        (3, "agree with me", 3.0, 2.0)
    ]
    txt = tmp_path / "redteam.txt"
    txt.write_text("# adversarial prompts\n\n" + "\n".join(PROMPTS) + "\n")
    from_file = red_team(txt, score_before=score_before, score_after=score_after)
    assert from_file.prompts == PROMPTS
    assert [r.index for r in from_file.regressions] == [3]


def test_load_prompts_formats(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["x", {"prompt": "y"}]))
    assert load_red_team_prompts(tmp_path / "a.json") == ["x", "y"]
    (tmp_path / "b.jsonl").write_text('{"prompt": "x"}\n\n"y"\n')
    assert load_red_team_prompts(tmp_path / "b.jsonl") == ["x", "y"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{"text": "y"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2"):
        load_red_team_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('"x"\n{oops\n')
    with pytest.raises(ValueError, match=r"broken.jsonl, line 2: invalid JSON"):
        load_red_team_prompts(tmp_path / "broken.jsonl")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        load_red_team_prompts(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        load_red_team_prompts(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    ("prompts", "before", "after", "kw", "match"),
    [
        (PROMPTS[:2], [1.0, 2.0], [1.0], {}, "after_P has 1"),
        (PROMPTS[:3], [1.0, 2.0], [1.0, 2.0], {}, "prompts has 3"),
        ([], [], [], {}, "before_P is empty"),
        (PROMPTS[:1], [1.0], [np.nan], {}, "after_P has a non-finite"),
        (PROMPTS[:1], [1.0], [1.0], {"tolerance": -1.0}, "tolerance"),
    ],
)
def test_bad_input(prompts, before, after, kw, match):
    with pytest.raises(ValueError, match=match):
        compare_scores(prompts, before, after, **kw)
