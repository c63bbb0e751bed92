"""Why a session failed, in the words the summary and the run history show."""

from __future__ import annotations

import signal
import sys

from anima_lora_flow.core.processes import start_process_group
from anima_lora_flow.runner.supervise import supervise
from anima_lora_flow.runner.train import _failure_message

_CHATTY_TRAINER = "import sys, time; print('INFO validation loss: 4 images', flush=True); time.sleep(60)"


def test_a_trainer_killed_by_a_signal_is_said_to_be_killed_not_blamed_on_its_last_line(tmp_path):
    log = tmp_path / "trainer.log"
    proc = start_process_group([sys.executable, "-c", _CHATTY_TRAINER], log_path=log)
    killed = {"sent": False}

    def kill_once_it_has_spoken(_sec_per_step):
        if not killed["sent"] and log.exists() and "INFO" in log.read_text():
            proc.send_signal(signal.SIGKILL)
            killed["sent"] = True
        return False

    outcome = supervise(proc, tmp_path / "events.jsonl", should_stop=kill_once_it_has_spoken, poll_s=0.05)
    message = _failure_message(outcome, log)
    assert outcome.returncode == -signal.SIGKILL
    assert message.startswith("training failed at step 0: the trainer was killed by SIGKILL (sent by another "
                              "process, or by the kernel when the machine ran out of RAM)")
    assert "validation loss" not in message and "run the same command again to resume" in message


def test_an_exit_without_an_error_event_still_quotes_the_last_line(tmp_path):
    log = tmp_path / "trainer.log"
    proc = start_process_group([sys.executable, "-c", "print('RuntimeError: boom'); raise SystemExit(1)"], log_path=log)
    outcome = supervise(proc, tmp_path / "events.jsonl", poll_s=0.05)
    assert "training failed at step 0: RuntimeError: boom (full log:" in _failure_message(outcome, log)
