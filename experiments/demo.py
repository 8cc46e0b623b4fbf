"""The loss library end to end on a tabular RLHF task with a known gold reward.

    make demo-losses     # or: python experiments/demo.py [--seed 0]

Every prompt has N candidate responses, each a feature vector; the gold reward is linear in the
features. Simulated raters label pairs from the reference (uniform) policy with Bradley–Terry
noise. Then, as in the full pipeline:
  1. a reward model is fitted with ``bradley_terry_loss``;
  2. PPO optimises a tabular policy against that reward model with a per-token KL penalty
     (``kl_shaped_rewards``, adaptive controller), GAE, the clipped policy loss and a value
     baseline — one rollout-and-update iteration is one compiled XLA program;
  3. DPO optimises another policy on the same preferences, with no reward model.
Both policies are judged by the gold reward and by win rate against the reference.

The language-model pipeline (pretrain → SFT → preferences → reward model → PPO/DPO on the
embedded synthetic task) is built from the same losses on top of ``rlhf_jax.models``.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import optax

from rlhf_jax import losses

PROMPTS, RESPONSES, FEATURES = 64, 16, 8


def make_task(key):
    """Features x[p, n], gold reward r*(p, n) = x·w*, and rater-labelled preference pairs."""
    k_x, k_w, k_pairs, k_labels = jax.random.split(key, 4)
    x_PxNxF = jax.random.normal(k_x, (PROMPTS, RESPONSES, FEATURES))
    gold_PxN = x_PxNxF @ jax.random.normal(k_w, (FEATURES,))
    num_pairs = 3072
    prompt = jax.random.randint(k_pairs, (num_pairs,), 0, PROMPTS)
    a, b = jax.random.randint(jax.random.fold_in(k_pairs, 1), (2, num_pairs), 0, RESPONSES)
    # Raters prefer a with probability σ(r*_a − r*_b): Bradley–Terry noise.
    a_wins = jax.random.bernoulli(
        k_labels, jax.nn.sigmoid(gold_PxN[prompt, a] - gold_PxN[prompt, b])
    )
    chosen, rejected = jnp.where(a_wins, a, b), jnp.where(a_wins, b, a)
    keep = a != b
    pairs = {"prompt": prompt[keep], "chosen": chosen[keep], "rejected": rejected[keep]}
    return x_PxNxF, gold_PxN, pairs


def split(pairs, n_train):
    return (
        {k: v[:n_train] for k, v in pairs.items()},
        {k: v[n_train:] for k, v in pairs.items()},
    )


def train_reward_model(x_PxNxF, train, steps=300):
    def loss_fn(w, batch):
        r_PxN = x_PxNxF @ w
        return losses.bradley_terry_loss(
            r_PxN[batch["prompt"], batch["chosen"]], r_PxN[batch["prompt"], batch["rejected"]]
        )

    opt = optax.adam(0.05)

    @jax.jit
    def step(w, opt_state):
        (_, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(w, train)
        updates, opt_state = opt.update(grad, opt_state)
        return optax.apply_updates(w, updates), opt_state, metrics

    w = jnp.zeros(FEATURES)
    opt_state = opt.init(w)
    for _ in range(steps):
        w, opt_state, metrics = step(w, opt_state)
    return w, loss_fn, metrics


def policy_stats(logits_PxN, gold_PxN):
    """Gold reward, KL to the uniform reference, and win rate against it (ties count half)."""
    probs = jax.nn.softmax(logits_PxN)
    logp = jax.nn.log_softmax(logits_PxN)
    kl = jnp.mean(jnp.sum(probs * (logp + jnp.log(RESPONSES)), axis=-1))
    ref = jnp.full((RESPONSES,), 1.0 / RESPONSES)
    beats = (gold_PxN[:, :, None] > gold_PxN[:, None, :]) + 0.5 * (
        gold_PxN[:, :, None] == gold_PxN[:, None, :]
    )
    win = jnp.mean(jnp.einsum("pn,pnm,m->p", probs, beats, ref))
    return {"gold": jnp.mean(jnp.sum(probs * gold_PxN, -1)), "kl": kl, "win_rate": win}


@functools.partial(jax.jit, static_argnames=("samples", "epochs"))
def ppo_iteration(state, reward_PxN, *, samples=8, epochs=4):
    """Rollout → score → KL-shaped rewards → GAE → epochs of clipped updates: one program."""
    params, opt_state, kl_ctl, key = state
    key, k_sample = jax.random.split(key)
    logits_PxN, values_P = params["policy"], params["value"]
    actions_PxS = jax.random.categorical(k_sample, logits_PxN[:, None, :], shape=(PROMPTS, samples))
    prompts_PxS = jnp.broadcast_to(jnp.arange(PROMPTS)[:, None], (PROMPTS, samples))
    batch_B = prompts_PxS.reshape(-1)
    act_B = actions_PxS.reshape(-1)
    mask_Bx1 = jnp.ones((batch_B.shape[0], 1))
    old_logp_Bx1 = jax.nn.log_softmax(logits_PxN)[batch_B, act_B][:, None]
    ref_logp_Bx1 = jnp.full_like(old_logp_Bx1, -jnp.log(RESPONSES))
    scores_B = reward_PxN[batch_B, act_B]
    rewards_Bx1, kl_Bx1 = losses.kl_shaped_rewards(
        scores_B, old_logp_Bx1, ref_logp_Bx1, mask_Bx1, kl_coef=kl_ctl.coef, estimator="k1"
    )
    old_values_Bx1 = values_P[batch_B][:, None]
    adv_Bx1, returns_Bx1 = losses.gae(rewards_Bx1, old_values_Bx1, mask_Bx1, gamma=1.0, lam=0.95)
    adv_Bx1 = losses.whiten(adv_Bx1, mask_Bx1)

    def loss_fn(p):
        logp = jax.nn.log_softmax(p["policy"])[batch_B, act_B][:, None]
        pg, pg_metrics = losses.ppo_policy_loss(logp, old_logp_Bx1, adv_Bx1, mask_Bx1)
        vf, vf_metrics = losses.value_loss(
            p["value"][batch_B][:, None], old_values_Bx1, returns_Bx1, mask_Bx1, clip_eps=0.2
        )
        return pg + 0.1 * vf, (pg_metrics, vf_metrics)

    def epoch(carry, _):
        p, o = carry
        grads, metrics = jax.grad(loss_fn, has_aux=True)(p)
        updates, o = OPT.update(grads, o)
        return (optax.apply_updates(p, updates), o), metrics

    (params, opt_state), (pg_metrics, _) = jax.lax.scan(epoch, (params, opt_state), None, epochs)
    mean_kl = jnp.mean(jnp.sum(kl_Bx1, -1))
    kl_ctl = losses.adaptive_kl_update(kl_ctl, mean_kl, batch_B.shape[0])
    metrics = {
        "score": jnp.mean(scores_B),
        "kl": mean_kl,
        "kl_coef": kl_ctl.coef,
        "first_epoch_clipfrac": pg_metrics["clipfrac"][0],
    }
    return (params, opt_state, kl_ctl, key), metrics


OPT = optax.adam(0.05)


def train_ppo(reward_PxN, key, iterations=150):
    params = {"policy": jnp.zeros((PROMPTS, RESPONSES)), "value": jnp.zeros(PROMPTS)}
    kl_ctl = losses.adaptive_kl_init(init_coef=0.05, target=1.0, horizon=10000)
    state = (params, OPT.init(params), kl_ctl, key)
    history = []
    for _ in range(iterations):
        state, metrics = ppo_iteration(state, reward_PxN)
        history.append(metrics)
    return state[0]["policy"], history


def train_dpo(train, beta=0.1, steps=300):
    ref_logp = -jnp.log(RESPONSES)

    def loss_fn(logits_PxN):
        logp = jax.nn.log_softmax(logits_PxN)
        chosen = logp[train["prompt"], train["chosen"]]
        rejected = logp[train["prompt"], train["rejected"]]
        return losses.dpo_loss(
            chosen,
            rejected,
            jnp.full_like(chosen, ref_logp),
            jnp.full_like(rejected, ref_logp),
            beta=beta,
        )

    opt = optax.adam(0.05)

    @jax.jit
    def step(logits, opt_state):
        (_, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(logits)
        updates, opt_state = opt.update(grad, opt_state)
        return optax.apply_updates(logits, updates), opt_state, metrics

    logits = jnp.zeros((PROMPTS, RESPONSES))
    opt_state = opt.init(logits)
    for _ in range(steps):
        logits, opt_state, metrics = step(logits, opt_state)
    return logits, metrics


def run(seed: int = 0) -> dict[str, dict]:
    """Runs the three phases, prints a report, and returns the policies' gold statistics."""
    start = time.perf_counter()
    key = jax.random.key(seed)
    x_PxNxF, gold_PxN, pairs = make_task(key)
    train, test = split(pairs, 2048)
    print(
        f"Tabular RLHF task: {PROMPTS} prompts x {RESPONSES} responses, "
        f"{train['prompt'].shape[0]} train / {test['prompt'].shape[0]} test preference pairs"
    )

    w, rm_loss, train_metrics = train_reward_model(x_PxNxF, train)
    _, test_metrics = rm_loss(w, test)
    reward_PxN = x_PxNxF @ w
    gold_order = jnp.mean(
        gold_PxN[test["prompt"], test["chosen"]] > gold_PxN[test["prompt"], test["rejected"]]
    )
    print(
        f"1. Reward model (Bradley–Terry): train acc {train_metrics['accuracy']:.3f}, "
        f"held-out acc {test_metrics['accuracy']:.3f} (raters agree with gold on "
        f"{gold_order:.3f} of those pairs)"
    )

    reference = policy_stats(jnp.zeros((PROMPTS, RESPONSES)), gold_PxN)
    ppo_logits, history = train_ppo(reward_PxN, jax.random.fold_in(key, 7))
    ppo = policy_stats(ppo_logits, gold_PxN)
    print(
        f"2. PPO vs reward model, {len(history)} iterations: proxy score "
        f"{history[0]['score']:.3f} → {history[-1]['score']:.3f}, KL coef "
        f"{history[0]['kl_coef']:.3f} → {history[-1]['kl_coef']:.3f}, first-epoch clipfrac "
        f"{history[0]['first_epoch_clipfrac']:.2f}"
    )

    dpo_logits, dpo_metrics = train_dpo(train)
    dpo = policy_stats(dpo_logits, gold_PxN)
    print(
        f"3. DPO (β=0.1): implicit-reward accuracy {dpo_metrics['rewards/accuracies']:.3f}, "
        f"margin {dpo_metrics['rewards/margins']:.3f}"
    )

    print("\n   policy      gold reward   KL(π‖ref)   win rate vs ref (gold judge)")
    for name, s in (("reference", reference), ("PPO", ppo), ("DPO", dpo)):
        print(f"   {name:<10} {s['gold']:>11.3f} {s['kl']:>11.3f} {s['win_rate']:>12.3f}")
    print(f"\nDone in {time.perf_counter() - start:.1f} s.")
    return {"reference": reference, "ppo": ppo, "dpo": dpo, "ppo_history": history}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    run(parser.parse_args().seed)


if __name__ == "__main__":
    main()
