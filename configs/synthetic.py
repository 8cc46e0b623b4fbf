"""The whole pipeline on the embedded synthetic task (what `make demo` runs).

    python experiments/run_pipeline.py --config configs/synthetic.py
    python experiments/run_pipeline.py --config configs/synthetic.py:smoke   # seconds, for tests

pretrain → SFT → preferences (simulated raters) → reward model → PPO, and DPO on the same
preferences, then an evaluation report judged by the task's gold reward. Rerunning the same
command resumes at the first unfinished phase. Override any field on the command line, e.g.
`--config.ppo.kl_coef=0.02 --config.task.length_bias=0.3`.
"""

import ml_collections


def get_config(arg=None):
    smoke = arg == "smoke"
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r}; expected none or 'smoke'")
    c = ml_collections.ConfigDict()
    c.run_dir = "runs/synthetic_smoke" if smoke else "runs/synthetic"  # all outputs
    c.seed = 0  # model init and sampling
    c.console = True  # progress bars
    c.bucket_lengths = (16, 24)  # static sequence lengths of the supervised phases

    c.task = ml_collections.ConfigDict()
    c.task.seed = 0  # every generator of the task
    c.task.alphabet_size = 10  # symbols "0".."9"
    c.task.instructions = ("copy", "reverse", "sort")  # transforms the prompts ask for
    c.task.min_length = 3  # fewest symbols per prompt
    c.task.max_length = 6  # most symbols per prompt
    c.task.eval_fraction = 0.1  # prompts held out for evaluation (by hash)
    c.task.near_miss_credit = 0.5  # gold credit for a symbol one step off
    c.task.no_eos_penalty = 1.0  # gold penalty for a response that never ends
    c.task.pretrain_corruption = 0.2  # noise in the pretraining corpus's answers
    c.task.pretrain_examples = 2  # examples per pretraining text
    c.task.demo_corruption = 0.3  # noise in the SFT demonstrations (middling quality)
    c.task.length_noise = 0.2  # chance a demo answer is a symbol too long or short
    c.task.rater_temperature = 0.05  # Bradley–Terry noise of the simulated raters
    c.task.disagreement = 0.0  # share of raters judging by an order-blind criterion
    c.task.random_label_rate = 0.0  # share of coin-flip labels
    c.task.length_bias = 0.0  # rater bonus per extra token (a flaw a reward model can learn)
    c.task.agreement_bias = 0.0  # rater bonus per symbol parroted from the prompt

    c.model = ml_collections.ConfigDict()  # a small Llama-style LM, trained from scratch
    c.model.model_type = "llama"
    c.model.vocab_size = 18  # replaced by the task's vocabulary size by the pipeline
    c.model.hidden_size = 64 if smoke else 128  # D
    c.model.num_layers = 2  # blocks
    c.model.num_heads = 4  # H
    c.model.num_kv_heads = 2  # GQA key/value heads
    c.model.head_dim = 16 if smoke else 32  # K
    c.model.mlp_dim = 128 if smoke else 256  # SwiGLU width
    c.model.norm = "rms"
    c.model.norm_eps = 1e-5
    c.model.activation = "silu"
    c.model.gated_mlp = True
    c.model.positions = "rope"
    c.model.max_position_embeddings = 64
    c.model.rotary_dim = 16 if smoke else 32  # rotary dims per head (all of them)
    c.model.tie_embeddings = True

    def stage(steps, batch, lr, examples=0):
        s = ml_collections.ConfigDict()
        s.steps = steps  # optimizer steps
        s.batch_size = batch  # sequences or pairs per step
        s.learning_rate = lr  # peak learning rate (cosine decay to 10%)
        s.warmup_steps = max(steps // 10, 1)  # linear warmup
        s.examples = examples  # rows of generated data
        return s

    c.pretrain = stage(20 if smoke else 600, 64, 3e-3, 512 if smoke else 20000)
    c.sft = stage(20 if smoke else 300, 64, 1e-3, 256 if smoke else 8000)
    c.reward = stage(20 if smoke else 1000, 64, 3e-4)
    c.dpo = stage(20 if smoke else 200, 64, 1e-4)
    c.dpo_beta = 0.1  # DPO β
    c.reward_pooling = "mean"  # reward readout: "mean" over the response, or the "last" token

    c.preferences = ml_collections.ConfigDict()
    c.preferences.prompts = 256 if smoke else 16384  # two SFT samples each
    c.preferences.temperature = 1.0  # sampling temperature of the pairs

    c.ppo_iterations = 4 if smoke else 200  # PPO iterations
    c.ppo_prompts_per_iteration = 32 if smoke else 64  # prompts per iteration
    c.ppo_train_prompts = 512 if smoke else 8192  # PPO prompt set
    c.ppo = ml_collections.ConfigDict()
    c.ppo.response_length = 10  # N: max tokens sampled (longest answer + EOS + slack)
    c.ppo.temperature = 1.0  # sampling and re-scoring temperature (lm-human-preferences)
    c.ppo.missing_eos_penalty = -1.0  # score of a response with no EOS
    c.ppo.normalize_reward = True  # RM gain/bias fitted on SFT samples
    c.ppo.whiten_scores = False  # whiten scores without a mean shift
    c.ppo.score_clip = None  # clip normalised scores (None: off)
    c.ppo.kl_coef = 0.1  # β (initial, when adaptive)
    c.ppo.kl_target = None  # adaptive controller target; None: fixed β
    c.ppo.kl_horizon = 10000  # adaptive controller horizon
    c.ppo.kl_estimator = "k1"  # k1 | k2 | k3 | abs
    c.ppo.kl_in_loss = False  # KL in the loss instead of the reward
    c.ppo.advantage_estimator = "gae"  # gae | rloo | grpo
    c.ppo.samples_per_prompt = 1  # K (rloo/grpo: >= 2)
    c.ppo.value_model = (
        "separate"  # critic: its own trunk (from the RM), or "shared" with the policy
    )
    c.ppo.gamma = 1.0  # discount
    c.ppo.lam = 0.95  # GAE λ
    c.ppo.whiten_advantages = True  # whiten advantages per batch
    c.ppo.clip_eps = 0.2  # policy clip
    c.ppo.clip_eps_high = None  # asymmetric upper clip (None: clip_eps)
    c.ppo.dual_clip = None  # dual clip (None: off)
    c.ppo.value_clip_eps = 0.2  # value clip
    c.ppo.vf_coef = 0.1  # value loss weight
    c.ppo.entropy_coef = 0.0  # entropy bonus
    c.ppo.aggregation = "token_mean"  # token loss reduction
    c.ppo.ppo_epochs = 4  # passes per batch
    c.ppo.num_minibatches = 2  # minibatches per pass
    c.ppo.grad_accum_steps = 1  # micro-batches per minibatch
    c.ppo.fuse_iteration = False  # one program per iteration (no phase timing)
    c.ppo.policy_optimizer = ml_collections.ConfigDict()
    c.ppo.policy_optimizer.learning_rate = 1e-4  # policy Adam LR
    c.ppo.policy_optimizer.schedule = "constant"
    c.ppo.policy_optimizer.eps = 1e-5  # Adam ε (outside the root)
    c.ppo.policy_optimizer.eps_root = 0.0  # Adam ε inside the root (TF placement)
    c.ppo.policy_optimizer.max_grad_norm = 1.0
    c.ppo.critic_optimizer = ml_collections.ConfigDict()
    c.ppo.critic_optimizer.learning_rate = 1e-3  # critic Adam LR
    c.ppo.critic_optimizer.schedule = "constant"
    c.ppo.critic_optimizer.eps = 1e-5
    c.ppo.critic_optimizer.max_grad_norm = 1.0

    c.evaluation = ml_collections.ConfigDict()
    c.evaluation.prompts = 64 if smoke else 256  # held-out prompts
    c.evaluation.samples_per_prompt = (
        16  # samples per prompt and policy (their mean r* is compared)
    )
    c.evaluation.best_of_n = 8 if smoke else 16  # SFT samples per prompt for best-of-n
    c.evaluation.red_team = ()  # adversarial prompts (empty: the task's hardest cases)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1  # all devices
    c.mesh.tensor = 1
    c.mesh.num_devices = -1
    return c
