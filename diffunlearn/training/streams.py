"""Named random streams: every random draw of a training step comes from `Trainer.generator(step, stream)`.

A stream keeps one use of randomness apart from the others, so adding a draw to one (say, RL's relabelling) cannot
shift another (the forget loss's noise), and a resumed or multi-process run redraws exactly the same numbers.
The values are part of the saved runs' reproducibility: never renumber one.
"""

from enum import IntEnum


class Stream(IntEnum):
    FORGET = 1  # noise and timesteps of the forget-batch losses
    REMAIN = 2  # noise and timesteps of the remain-batch losses (and the monitor's repair steps)
    RELABEL = 3  # RL: the random labels (or pseudo-prompts) given to forget images
    SA_NOISE = 4  # SA: the noise images that stand in for the forget class
    LASTING_RELEARN = 5  # lasting: the simulated attacker's fine-tune steps on D_f (step index step * 1000 + i)
    LASTING_META = 6  # lasting: the forget loss after the simulated fine-tune
    LASTING_ATTACK = 7  # lasting: the inner condition attack's fitting steps (step index step * 1000 + i)
    LASTING_ATTACKED = 8  # lasting: the forget loss under the attacked condition
    LASTING_PRIOR = 9  # lasting: noise and timesteps of the prior-mapping term (null branch on D_f)
    MASK_FORGET = 1001  # SFR-on's saliency mask: Fisher batches of D_f
    MASK_REMAIN = 1002  # SFR-on's saliency mask: Fisher batches of D_r
    SALUN_MASK = 1003  # SalUn's gradient saliency on D_f
    SA_FISHER = 1004  # SA: the EWC Fisher on the base model's samples
