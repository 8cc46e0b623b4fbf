"""Reward-model over-optimisation as a study (Gao, Schulman & Hilton 2022), on the synthetic task.

The gold reward r* plays Gao et al.'s gold reward model. Simulated raters label pairs of SFT
samples by r*; proxy reward models are trained on the first n of those pairs, for each n in
``data_sizes`` and each width in ``widths`` (a proxy of width w starts from a language model of
width w pretrained on the task's corpus, as Gao et al.'s proxies start from pretrained LMs of
each size). Then, for every proxy:

- best-of-n over SFT samples for n = 1 … 2^k: gold and proxy of the chosen sample by the
  unbiased rank-weight estimator (`evaluation.best_of_n_curve`), KL = log n − (n−1)/n;
- PPO against the proxy from the SFT policy, one arm per KL coefficient in ``kl_coefs`` (0: no
  penalty), logging gold, proxy and KL every iteration;

and both functional forms are fitted by least squares (`evaluation.fit_gao`) to the gold gained
over SFT against d = √KL: R_bon(d) = d(α − βd) and R_rl(d) = d(α − β log d), with R², α, β and
the d of the gold peak. The report (``report.md``, PNGs, ``report.json`` with every fitted
number) shows the curves in the manner of Gao et al.'s figure 1 and α, β against data size.

Every arm is resumable (its phase checkpoints; finished arms are skipped), and the proxies split
over ``workers`` processes (``worker`` = this one's index; e.g. one per GPU, each started with its
own visible devices): worker 0 runs the shared phases (pretrain, SFT, the labelled pairs, the
best-of-n samples) while the others wait for them, each worker then trains its proxies and their
RL arms, and the last to finish writes the report (``report_only`` writes it from what exists).

The policy's pretrain and SFT come from ``pipeline.base_run_dir`` when set (the default
pipeline's run), else the study trains them in ``<run_dir>/policy``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from typing import Any

import jax
import numpy as np

from rlhf_jax import evaluation as ev
from rlhf_jax.checkpoint import artifact_exists, read_artifact_meta
from rlhf_jax.inference import Scorer
from rlhf_jax.logging import jsonable
from rlhf_jax.placement import ModelSource, place_model
from rlhf_jax.synthetic.overoptimization_report import kl_tag, write_report
from rlhf_jax.synthetic.pipeline import Pipeline
from rlhf_jax.synthetic.pipeline_config import PipelineConfig, PPOStage, Stage
from rlhf_jax.training import reward as reward_lib
from rlhf_jax.training.config import build
from rlhf_jax.training.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """The over-optimisation study's run (module docstring)."""

    run_dir: str  # everything the study writes
    # The task, the policy's model and schedules, the raters, the reward loss and PPO's
    # options (its run_dir is replaced by <run_dir>/policy)
    pipeline: PipelineConfig
    data_sizes: tuple[int, ...] = (250, 1000, 4000, 16000)  # preference pairs per proxy
    # Prompts the raters' pairs are sampled for (None: 1.15 × the largest data size; pairs
    # that are identical or lack EOS are left out, so a weak SFT policy needs more)
    preference_prompts: int | None = None
    widths: tuple[int, ...] = (64, 128)  # proxy hidden sizes (heads keep the policy's count)
    reward_epochs: float = 4.0  # passes over each proxy's pairs
    reward_min_steps: int = 150  # at least this many optimizer steps per proxy
    reward_batch_size: int = 64  # pairs per step
    reward_learning_rate: float = 3e-4  # peak; warm-up 10%, cosine to 10%
    bon_prompts: int = 256  # held-out prompts for best-of-n
    bon_log2: int = 6  # best-of-n for n = 1, 2, 4, … 2^bon_log2 (samples per prompt)
    kl_coefs: tuple[float, ...] = (0.0, 0.1)  # one PPO arm per KL coefficient
    rl: PPOStage = dataclasses.field(
        default_factory=lambda: PPOStage(iterations=200, prompts_per_iteration=64, prompts=8192)
    )
    rl_learning_rate: float = 1e-4  # the policy's
    rl_bin: int = 5  # iterations averaged into one fitted RL point (gold is a batch mean)
    workers: int = 1  # processes sharing the arms
    worker: int = 0  # this process's index
    report_only: bool = False  # write the report from the finished arms, train nothing
    console: bool = True  # progress bars

    def __post_init__(self):
        if not self.data_sizes or min(self.data_sizes) < 2:
            raise ValueError(f"data_sizes={self.data_sizes}: need sizes of at least 2 pairs")
        if not self.widths or any(w % self.pipeline.model.num_heads for w in self.widths):
            raise ValueError(
                f"widths={self.widths}: each must be a multiple of model.num_heads "
                f"({self.pipeline.model.num_heads})"
            )
        if not 1 <= self.bon_log2 <= 10:
            raise ValueError(f"bon_log2={self.bon_log2}: expected 1..10")
        if not self.kl_coefs or any(k < 0 for k in self.kl_coefs):
            raise ValueError(f"kl_coefs={self.kl_coefs}: expected coefficients >= 0")
        if not 0 <= self.worker < self.workers:
            raise ValueError(f"worker={self.worker} with workers={self.workers}")
        if self.rl_bin < 1 or self.rl.iterations < 2 * self.rl_bin:
            raise ValueError(
                f"rl_bin={self.rl_bin}: need two or more bins in rl.iterations={self.rl.iterations}"
            )


# Fields that change no arm: where it runs, how it is split, how it reports.
_RUN_FIELDS = ("run_dir", "workers", "worker", "report_only", "console")


def _arm_fields(config: StudyConfig) -> dict[str, Any]:
    """The config's fields as dotted names (``pipeline.seed``), less the ones no arm reads."""
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix[:-1]] = value

    walk("", json.loads(json.dumps(dataclasses.asdict(config), default=str)))
    for name in (*_RUN_FIELDS, "pipeline.console", "pipeline.run_dir"):
        flat.pop(name, None)
    return flat


@dataclasses.dataclass(frozen=True)
class Proxy:
    width: int
    pairs: int

    @property
    def tag(self) -> str:
        return f"w{self.width}_n{self.pairs}"


class Study:
    """Runs the arms of `StudyConfig` this worker owns, then (when all exist) the report."""

    def __init__(self, config: StudyConfig):
        self.config = config
        self.root = pathlib.Path(config.run_dir).absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        c = config.pipeline
        self.pipeline = Pipeline(
            dataclasses.replace(
                c,
                run_dir=str(self.root / "policy"),
                console=config.console,
                preferences=dataclasses.replace(
                    c.preferences,
                    prompts=config.preference_prompts or math.ceil(max(config.data_sizes) * 1.15),
                ),
            )
        )
        self._check_resume()
        self.proxies = [Proxy(w, n) for w in config.widths for n in sorted(config.data_sizes)]
        # Every arm, in a fixed order: a proxy, then its RL arms (a worker owns all three).
        self.arms = [
            arm
            for p in self.proxies
            for arm in (("proxy", p, None), *(("rl", p, k) for k in config.kl_coefs))
        ]

    # -- the pieces ----------------------------------------------------------------------------
    def path(self, *parts) -> pathlib.Path:
        return self.root.joinpath(*parts)

    def _check_resume(self):
        """Record the fields the arms depend on (study.json); a rerun in the same run_dir with
        other values would mix arms of two studies, so it is refused, naming the fields."""
        now = _arm_fields(self.config)
        path = self.path("study.json")
        if not path.exists():
            path.write_text(json.dumps(jsonable(dataclasses.asdict(self.config)), indent=2))
            return
        try:  # fields added to the code since then take their defaults
            saved = _arm_fields(build(StudyConfig, json.loads(path.read_text())))
        except ValueError as e:
            raise ValueError(f"{path}: not a study config this version can read ({e})") from None
        differ = sorted(k for k in now.keys() | saved.keys() if now.get(k) != saved.get(k))
        if differ:
            raise ValueError(
                f"run_dir={self.config.run_dir!r} holds a study run with other "
                f"{', '.join(differ)} ({path}): use another run_dir, or delete it to start over"
            )

    def _mine(self, proxy: Proxy) -> bool:
        return self.proxies.index(proxy) % self.config.workers == self.config.worker

    def _shared_phases(self) -> bool:
        """Worker 0 runs pretrain, SFT, the pairs and the best-of-n samples; the others wait
        until they exist. False if interrupted."""
        if self.config.worker == 0:
            result = self.pipeline.run(stop_after_phase="preferences")
            if result["status"] == "interrupted":
                return False
            self.bon_samples()
            return True
        ready = [self.pipeline.path("preferences", "DONE"), self.path("bon", "samples.npz")]
        waited = 0
        while not all(p.exists() for p in ready):
            if waited % 60 == 0:
                print(f"[study] worker {self.config.worker}: waiting for worker 0's shared phases")
            time.sleep(5)
            waited += 5
        return True

    def _proxy_artifact(self, proxy: Proxy) -> pathlib.Path:
        return self.path("proxies", proxy.tag, "artifact")

    def _width_model(self, width: int):
        m = self.pipeline.config.model
        if width == m.hidden_size:
            return m
        head = width // m.num_heads
        return dataclasses.replace(
            m,
            hidden_size=width,
            head_dim=head,
            mlp_dim=2 * width,
            rotary_dim=None if m.rotary_dim is None else min(m.rotary_dim, head),
        )

    def _pretrained(self, width: int) -> pathlib.Path:
        """The width's pretrained LM (the policy's own for its width)."""
        if width == self.pipeline.config.model.hidden_size:
            return self.pipeline.artifact("pretrain")
        c = self.pipeline.config
        lm = Pipeline(
            dataclasses.replace(
                c,
                run_dir=str(self.path("pretrained", f"w{width}")),
                base_run_dir=None,
                model=self._width_model(width),
                console=self.config.console,
            )
        )
        lm.run(stop_after_phase="pretrain")
        return lm.artifact("pretrain")

    def _pairs(self) -> list[str]:
        lines = self.pipeline.path("data", "preferences.jsonl").read_text().splitlines()
        need = max(self.config.data_sizes)
        if len(lines) < need:
            raise ValueError(
                f"the raters labelled {len(lines)} pairs, fewer than the largest data size "
                f"{need}: lower data_sizes, or raise preference_prompts and delete "
                f"{self.pipeline.path('preferences')} to sample them again"
            )
        return lines

    def train_proxy(self, proxy: Proxy):
        """A reward model on the first ``proxy.pairs`` labelled pairs."""
        c = self.config
        data = self.path("proxies", "data", f"pairs_{proxy.pairs}.jsonl")
        if not data.exists():
            data.parent.mkdir(parents=True, exist_ok=True)
            data.write_text("\n".join(self._pairs()[: proxy.pairs]) + "\n")
        steps = max(
            math.ceil(c.reward_epochs * proxy.pairs / c.reward_batch_size), c.reward_min_steps
        )
        stage = Stage(
            steps=steps,
            batch_size=c.reward_batch_size,
            optimizer=OptimizerConfig(
                learning_rate=c.reward_learning_rate,
                schedule="cosine",
                warmup_steps=max(steps // 10, 1),
                end_lr_fraction=0.1,
            ),
        )
        source = ModelSource(
            artifact=str(self._pretrained(proxy.width)), tokenizer=str(self.pipeline.tokenizer_dir)
        )
        return self.pipeline.run_stage(
            reward_lib.PHASE,
            str(self.path("proxies", proxy.tag)),
            stage,
            model=source,
            data_path=str(data),
            reward=self.pipeline.config.reward,
        )

    def rl(self, proxy: Proxy, kl_coef: float):
        """PPO against ``proxy`` at ``kl_coef`` (history in rl/<proxy>_<kl>/history.jsonl)."""
        c = self.config
        ppo = self.pipeline.config.ppo
        ppo = dataclasses.replace(
            ppo,
            kl_coef=kl_coef,
            policy_optimizer=dataclasses.replace(
                ppo.policy_optimizer, learning_rate=c.rl_learning_rate
            ),
        )
        source = ModelSource(
            artifact=str(self._proxy_artifact(proxy)), tokenizer=str(self.pipeline.tokenizer_dir)
        )
        return self.pipeline.run_rl(str(self.rl_dir(proxy, kl_coef)), c.rl, ppo, reward=source)

    def rl_dir(self, proxy: Proxy, kl_coef: float) -> pathlib.Path:
        return self.path("rl", f"{proxy.tag}_{kl_tag(kl_coef)}")

    def _rl_done(self, proxy: Proxy, kl_coef: float) -> bool:
        return artifact_exists(self.rl_dir(proxy, kl_coef) / "artifact")

    def bon_samples(self) -> dict[str, np.ndarray]:
        """2^k SFT samples per held-out prompt and their gold, drawn once (bon/samples.npz)."""
        path = self.path("bon", "samples.npz")
        if path.exists():
            return dict(np.load(path))
        c, task = self.config, self.pipeline.task
        n = 2**c.bon_log2
        prompts = task.prompts(c.bon_prompts, split="eval")
        tokens, mask = self.pipeline.encode(prompts)
        p, pm = np.repeat(tokens, n, axis=0), np.repeat(mask, n, axis=0)
        _, sampler = self.pipeline.policy_sampler(
            "sft", temperature=self.pipeline.config.ppo.temperature
        )
        r, rm = sampler(p, pm, jax.random.key(self.pipeline.config.seed + 303))
        gold = np.asarray(jax.jit(task.gold_reward_tokens)(p, pm, r, rm), np.float64)
        out = {
            "prompt": p,
            "prompt_mask": pm,
            "response": np.asarray(r),
            "response_mask": np.asarray(rm),
            "gold": gold.reshape(-1, n),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **out)
        tmp.rename(path)
        return out

    def best_of_n(self, proxy: Proxy) -> dict:
        """The proxy's best-of-n curve over the shared samples (bon/<proxy>.json)."""
        path = self.path("bon", f"{proxy.tag}.json")
        if path.exists():
            return json.loads(path.read_text())
        c, samples = self.config, self.bon_samples()
        artifact = self._proxy_artifact(proxy)
        scorer = Scorer(
            place_model(str(artifact), head="reward", mesh=self.pipeline.mesh),
            batch_size=256,
            pooling=read_artifact_meta(artifact).get("pooling") or "last",
        )
        n = 2**c.bon_log2
        proxy_BxN = (
            scorer.reward(
                samples["prompt"],
                samples["prompt_mask"],
                samples["response"],
                samples["response_mask"],
            )
            .astype(np.float64)
            .reshape(-1, n)
        )
        gold_BxN = samples["gold"]
        points = ev.best_of_n_curve(proxy_BxN, gold_BxN, ns=[2**k for k in range(c.bon_log2 + 1)])
        # Held-out pairwise accuracy against gold: samples 2j and 2j+1 of each prompt.
        dp = proxy_BxN[:, 0::2] - proxy_BxN[:, 1::2]
        dg = gold_BxN[:, 0::2] - gold_BxN[:, 1::2]
        distinct = dg != 0
        out = {
            "points": [dataclasses.asdict(p) for p in points],
            "gold_accuracy": float(np.mean((np.sign(dp) == np.sign(dg))[distinct])),
        }
        path.write_text(json.dumps(out, indent=2))
        return out

    # -- running -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        if not self.config.report_only:
            if not self._shared_phases():
                return {"status": "interrupted"}
            for kind, proxy, kl_coef in self.arms:
                if not self._mine(proxy):
                    continue
                if kind == "proxy":
                    if not artifact_exists(self._proxy_artifact(proxy)):
                        result = self.train_proxy(proxy)
                        if isinstance(result, dict) and result.get("status") == "interrupted":
                            return {"status": "interrupted"}
                    self.best_of_n(proxy)
                elif not self._rl_done(proxy, kl_coef):
                    result = self.rl(proxy, kl_coef)
                    if isinstance(result, dict) and result.get("status") == "interrupted":
                        return {"status": "interrupted"}
        missing = [p.tag for p in self.proxies if not self.path("bon", f"{p.tag}.json").exists()]
        missing += [
            f"{p.tag}_{kl_tag(k)}"
            for p in self.proxies
            for k in self.config.kl_coefs
            if not self._rl_done(p, k)
        ]
        if missing:
            print(f"[study] arms not finished yet: {missing}; the report waits for them")
            return {"status": "partial", "missing": missing}
        return {"status": "finished", **write_report(self)}
