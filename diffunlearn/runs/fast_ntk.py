"""One Fast-NTK run on a digits classifier (`diffunlearn fast-ntk`): the forget / retain split, the closed-form scrub,
FA / RA / TA / MIA before and after, written as a run folder (the scrubbed classifier, `save_pretrained`, with
`fast_ntk.json` beside it) built in `.NAME.partial` and moved into place when complete.

For class forgetting TA and the MIA's non-members are the test images of the retained classes, as in the classifier
benchmark. The subset is linearised at zero by default (`init="zeros"`, the benchmark's setting, which forgets);
`init="current"` linearises at the trained weights (the reference code's approximation, which leaves a trained head
nearly as it was).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import UserError, choice_error
from ..outputs import check_output, finalize, work_folder, write_json

RESULT_FILE = "fast_ntk.json"


def fast_ntk_run(output, model="embedded:digits/classifier", forget_classes=None, forget_fraction=None, seed: int = 0,
                 subset: str = "head", loss: str = "ce", weight_decay: float = 5e-4, init: str = "zeros",
                 overwrite: bool = False) -> dict:
    """Run Fast-NTK on a DigitsClassifier folder; returns what it writes to `OUTPUT/fast_ntk.json`.

    Raises:
        UserError: an existing output without `overwrite`, a bad model path, forget target or option; all checked
            before anything is written.
    """
    from ..assets import resolve_model_path
    from ..data import load_digits_splits
    from ..evaluation.classification import classification_report
    from ..models.digits_classifier import DigitsClassifier
    from ..ntk.subset import INITS
    from ..ntk.unlearn import fast_ntk_scrub

    if init not in INITS:
        raise choice_error("--init", init, INITS)
    out = Path(output)
    check_output(out, overwrite)
    try:
        classifier = DigitsClassifier.from_pretrained(resolve_model_path(model)).eval()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot load --model {model!r} as a DigitsClassifier folder: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    train, test = load_digits_splits()
    if forget_classes is not None:
        bad = [c for c in forget_classes if not 0 <= c < classifier.config.num_classes]
        if bad:
            raise UserError(f"--forget-classes {bad} out of range; valid: 0..{classifier.config.num_classes - 1}")
        forget, retain = train.forget_remain(forget_classes)
        test = test.select_classes(forget_classes, keep=False)  # TA on the retained classes (the benchmark's)
    elif forget_fraction is None or not 0 < forget_fraction < 1:
        raise UserError(f"--forget-fraction {forget_fraction} is invalid; give a number in (0, 1)")
    else:
        forget, retain = train.random_forget_remain(forget_fraction, seed)
    if len(forget) == 0:
        raise UserError(f"the forget set is empty for --forget-classes {forget_classes}")
    result = fast_ntk_scrub(classifier, forget, retain, subset=subset, loss=loss, weight_decay=weight_decay,
                            init=init)
    summary = {"model": model, "forget_classes": forget_classes, "forget_fraction": forget_fraction, "seed": seed,
               "subset": subset, "loss": loss, "weight_decay": weight_decay, "init": init, "info": result.info,
               "metrics": {"original": classification_report(classifier, None, forget, retain, test),
                           "unlearned": classification_report(result.model, None, forget, retain, test)}}
    work = work_folder(out)
    shutil.rmtree(work, ignore_errors=True)  # an interrupted scrub leaves nothing worth resuming
    result.model.save_pretrained(work)
    write_json(work / RESULT_FILE, summary)
    finalize(work, out)
    return summary
