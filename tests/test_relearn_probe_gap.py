"""`stop.relearn_probe_gap`: after a relearning probe that failed, the stops asked for within the gap count as failed
without a probe (a cheaper probe schedule for the lasting configs)."""

import pytest
from conftest import tiny_ddpm
from test_lasting import ScriptedProbe
from test_monitor import BASE, Scripted

from diffunlearn.config_loading import build_config, read_yaml
from diffunlearn.errors import UserError
from diffunlearn.evaluation.monitor import CONTINUE, STOP, Monitor, StopRule


def test_no_probe_within_the_gap_after_a_failed_one():
    probe = ScriptedProbe([0.9, 0.5, 0.1], gap=4)
    mon = Monitor(tiny_ddpm(), Scripted([(0.0, 1.0)] * 5), BASE, StopRule(0.05, patience=1), 2, 100, probe=probe)
    assert [mon(step) for step in (1, 3, 5, 7, 9)] == [False, False, False, False, True]
    assert probe.calls == 3, "steps 4 and 8 are within 4 steps of a failed probe"
    skipped = [h["step"] for h in mon.history if h["relearn_probe"].get("skipped")]
    assert skipped == [4, 8]
    assert mon.history[1]["relearn_probe"] == {"skipped": True, "last_failed_at_step": 2, "passed": False}
    assert [h["action"] for h in mon.history] == [CONTINUE] * 4 + [STOP]
    assert [h["best"] for h in mon.history] == [False] * 4 + [True], "a skipped state is no fallback either"


def test_gap_zero_probes_every_stop():
    probe = ScriptedProbe([0.9, 0.9, 0.1])
    mon = Monitor(tiny_ddpm(), Scripted([(0.0, 1.0)] * 3), BASE, StopRule(0.05, patience=1), 2, 100, probe=probe)
    assert [mon(step) for step in (1, 3, 5)] == [False, False, True] and probe.calls == 3


@pytest.mark.parametrize("value", ["-10", "2.5"])
def test_bad_gap_is_refused(value):
    with pytest.raises(UserError, match="stop.relearn_probe_gap"):
        build_config(read_yaml("configs/digits/ddpm_lasting.yaml"), [f"stop.relearn_probe_gap={value}"])
