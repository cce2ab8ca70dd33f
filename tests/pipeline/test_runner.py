"""The orchestration logic with cheap fake stages: order, markers, skip, resume, --from, failures, signals."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from scratchllm.errors import ScratchError
from scratchllm.pipeline.runner import STATE_DIR, Context, Stage, StageInterrupted, run_stages

RESUME = "scratchllm pipeline --config x.toml"


class Fake:
    """Stages that write ``out.txt`` in their directory and record every call."""

    def __init__(self, names=("a", "b", "c")) -> None:
        self.names = names
        self.calls: list[str] = []
        self.fail: dict[str, BaseException] = {}
        self.seen_partial: dict[str, bool] = {}

    def stages(self) -> list[Stage]:
        return [Stage(n, self._runner(n), self._verifier(n)) for n in self.names]

    def _runner(self, name):
        def run(ctx: Context) -> dict:
            self.calls.append(name)
            d = ctx.dir(name)
            self.seen_partial[name] = (d / "partial.txt").exists()
            (d / "partial.txt").write_text("half")
            if name in self.fail:
                raise self.fail.pop(name)
            (d / "out.txt").write_text(f"{name} output")
            return {"made": name}

        return run

    def _verifier(self, name):
        def verify(ctx: Context) -> None:
            p = ctx.dir(name) / "out.txt"
            if not p.exists() or p.read_text() != f"{name} output":
                raise ScratchError(f"{p} missing or wrong")

        return verify


def ctx_for(tmp_path: Path, tables=None) -> Context:
    return Context(cfg=None, run_dir=tmp_path, resume_command=RESUME, log=lambda m: None, tables=tables or {})


def test_runs_in_order_and_writes_markers_after_verifying(tmp_path):
    fake = Fake()
    assert run_stages(fake.stages(), ctx_for(tmp_path)) == {"a": "done", "b": "done", "c": "done"}
    assert fake.calls == ["a", "b", "c"]
    for n in "abc":
        marker = json.loads((tmp_path / STATE_DIR / f"{n}.done.json").read_text())
        assert marker["summary"] == {"made": n}
        assert marker["seconds"] >= 0 and marker["peak_rss_mb"] > 0


def test_rerun_skips_complete_stages_and_redoes_invalid_ones(tmp_path):
    fake = Fake()
    run_stages(fake.stages(), ctx_for(tmp_path))
    fake.calls.clear()
    assert set(run_stages(fake.stages(), ctx_for(tmp_path)).values()) == {"skipped"}
    assert fake.calls == []
    (tmp_path / "b" / "out.txt").write_text("corrupted")  # outputs no longer valid -> b runs again
    assert run_stages(fake.stages(), ctx_for(tmp_path)) == {"a": "skipped", "b": "done", "c": "skipped"}
    assert fake.calls == ["b"]


def test_from_restarts_that_stage_and_every_later_one(tmp_path):
    fake = Fake()
    run_stages(fake.stages(), ctx_for(tmp_path))
    (tmp_path / "b" / "extra.txt").write_text("stale")
    fake.calls.clear()
    assert run_stages(fake.stages(), ctx_for(tmp_path), start_from="b") == {"a": "skipped", "b": "done", "c": "done"}
    assert fake.calls == ["b", "c"]
    assert not (tmp_path / "b" / "extra.txt").exists()  # a clean restart
    with pytest.raises(ScratchError, match="unknown stage 'nope'"):
        run_stages(fake.stages(), ctx_for(tmp_path), start_from="nope")


def test_failure_names_stage_reason_and_resume_command_then_resumes(tmp_path):
    fake = Fake()
    fake.fail["b"] = ScratchError("disk on fire", "put it out")
    with pytest.raises(ScratchError) as e:
        run_stages(fake.stages(), ctx_for(tmp_path))
    assert "stage 'b' failed: disk on fire" in e.value.message
    assert "put it out" in e.value.hint and RESUME in e.value.hint
    assert fake.calls == ["a", "b"]
    assert not (tmp_path / STATE_DIR / "b.done.json").exists()
    fake.calls.clear()
    assert run_stages(fake.stages(), ctx_for(tmp_path)) == {"a": "skipped", "b": "done", "c": "done"}
    assert fake.calls == ["b", "c"]


def test_unexpected_exception_is_reported_with_stage_and_traceback_file(tmp_path):
    fake = Fake()
    fake.fail["c"] = ZeroDivisionError("boom")
    with pytest.raises(ScratchError) as e:
        run_stages(fake.stages(), ctx_for(tmp_path))
    assert "stage 'c' failed: ZeroDivisionError: boom" in e.value.message
    assert RESUME in e.value.hint
    assert "ZeroDivisionError" in (tmp_path / "pipeline.log").read_text()


def test_full_disk_in_a_stage_is_the_disk_full_message(tmp_path):
    import errno

    fake = Fake()
    fake.fail["b"] = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "b" / "x.bin"))
    with pytest.raises(ScratchError) as e:
        run_stages(fake.stages(), ctx_for(tmp_path))
    assert e.value.message == f"stage 'b' failed: disk full while writing {tmp_path / 'b' / 'x.bin'}"
    assert "free disk space" in e.value.hint and RESUME in e.value.hint


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_stage_keeps_partial_work_and_resumes(tmp_path, how):
    fake = Fake()
    if how == "ctrl-c":
        fake.fail["b"] = KeyboardInterrupt()
        stages = fake.stages()
    else:
        stages = fake.stages()
        inner = stages[1].run

        def run_then_kill(ctx):
            inner(ctx)
            os.kill(os.getpid(), signal.SIGTERM)  # `kill PID` while the stage runs
            raise AssertionError("SIGTERM should have stopped the stage")

        stages[1].run = run_then_kill
    with pytest.raises(StageInterrupted):
        run_stages(stages, ctx_for(tmp_path))
    assert not (tmp_path / STATE_DIR / "b.done.json").exists()
    assert (tmp_path / "b" / "partial.txt").exists()
    fake.calls.clear()
    assert run_stages(fake.stages(), ctx_for(tmp_path)) == {"a": "skipped", "b": "done", "c": "done"}
    assert fake.seen_partial["b"]  # same config: the stage resumed with its partial outputs in place
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is removed again


def test_config_change_reruns_the_stage_afresh_and_everything_after(tmp_path):
    fake = Fake()
    run_stages(fake.stages(), ctx_for(tmp_path, {"b": {"lr": 1}}))
    fake.calls.clear()
    assert run_stages(fake.stages(), ctx_for(tmp_path, {"b": {"lr": 2}})) == {"a": "skipped", "b": "done", "c": "done"}
    assert fake.calls == ["b", "c"]
    # An interrupted attempt under another config is not resumed: its directory is cleared first.
    fake.fail["b"] = KeyboardInterrupt()
    with pytest.raises(StageInterrupted):
        run_stages(fake.stages(), ctx_for(tmp_path, {"b": {"lr": 3}}))
    run_stages(fake.stages(), ctx_for(tmp_path, {"b": {"lr": 4}}))
    assert fake.seen_partial["b"] is False


def test_skipped_stages(tmp_path):
    fake = Fake()
    stages = fake.stages()
    assert run_stages(stages, ctx_for(tmp_path), skip=["b"]) == {"a": "done", "b": "left out", "c": "done"}
    assert not (tmp_path / "b").exists()
    # Bringing a left-out stage back runs it and everything after it (c may depend on b's outputs).
    assert run_stages(stages, ctx_for(tmp_path)) == {"a": "skipped", "b": "done", "c": "done"}
