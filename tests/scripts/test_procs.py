"""The process runner of scripts/ and tests/ (scripts/supervise/procs.py) on real child
processes: start and readiness, a child that dies or never gets ready (the error carries
the end of its log), and stopping: SIGTERM first, SIGKILL for a child that ignores it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.supervise import procs

IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ignoring SIGTERM', flush=True); time.sleep(60)"
)
EXITS_ON_TERM = (
    "import signal, sys, time; "
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
    "print('up', flush=True); time.sleep(60)"
)


def python(code: str, log: Path) -> subprocess.Popen[bytes]:
    return procs.start([sys.executable, "-c", code], log)


def logged(log: Path, text: str) -> bool:
    return text in log.read_text()


def test_running_waits_until_ready_then_stops_it(tmp_path: Path) -> None:
    (tmp_path / "readyz").write_text("ok")
    port = procs.free_port()
    url = f"http://127.0.0.1:{port}/readyz"
    args = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with procs.running(
        "http.server",
        [*args, "--directory", str(tmp_path)],
        lambda: procs.answers_ready(url),
        tmp_path / "server.log",
        timeout=30,
        grace=10,
    ) as proc:
        assert procs.answers_ready(url)
        assert proc.poll() is None
    assert proc.returncode == -signal.SIGTERM
    assert not procs.answers_ready(url)
    assert "GET /readyz" in (tmp_path / "server.log").read_text()  # its output went to the log


def test_a_child_that_exits_before_ready_fails_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    code = "import sys; print('no such setting: FOO', file=sys.stderr); sys.exit(3)"
    proc = python(code, log)
    with pytest.raises(procs.ProcError) as failed:
        procs.wait_ready(
            "child", lambda: False, [proc], timeout=30, log_tail=lambda: procs.tail_of(log)
        )
    assert "child exited with 3" in str(failed.value)
    assert "no such setting: FOO" in str(failed.value)


def test_a_child_never_ready_fails_after_the_timeout_and_running_stops_it(
    tmp_path: Path,
) -> None:
    log = tmp_path / "child.log"
    started: list[subprocess.Popen[bytes]] = []
    original = procs.start

    def spy(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        started.append(original(*args, **kwargs))  # type: ignore[arg-type]
        return started[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(procs, "start", spy)
        with (
            pytest.raises(procs.ProcError, match="sleeper not ready after 1 s"),
            procs.running(
                "sleeper",
                [sys.executable, "-c", EXITS_ON_TERM],
                lambda: False,
                log,
                timeout=1,
                grace=10,
            ),
        ):
            pass
    (proc,) = started
    assert proc.returncode == 0  # stopped by its SIGTERM handler, not left running


def test_stop_sends_sigterm_and_waits_for_a_graceful_exit(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    proc = python(EXITS_ON_TERM, log)
    procs.wait_ready("child", lambda: logged(log, "up"), [proc], timeout=30)
    killed: list[int] = []
    procs.stop([proc], grace=30, on_kill=lambda p: killed.append(p.pid))
    assert proc.returncode == 0
    assert killed == []


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    proc = python(IGNORES_TERM, log)
    procs.wait_ready("child", lambda: logged(log, "ignoring SIGTERM"), [proc], timeout=30)
    killed: list[int] = []
    procs.stop([proc], grace=0.5, on_kill=lambda p: killed.append(p.pid))
    assert killed == [proc.pid]
    assert proc.returncode == -signal.SIGKILL


def test_children_stops_the_last_named_after_the_others(tmp_path: Path) -> None:
    """A Redis goes after the gateways that use it: each child notes when SIGTERM came."""
    children = procs.Children(last=("redis",))
    code = (
        "import signal, sys, time, pathlib; "
        "out = pathlib.Path(sys.argv[1]); "
        "signal.signal(signal.SIGTERM, lambda *_: (out.write_text(repr(time.time())), "
        "time.sleep(0.3), sys.exit(0))); "
        "out.with_suffix('.up').touch(); time.sleep(60)"
    )
    names = ["redis", "gateway1", "gateway2"]
    for name in names:
        children.popen(name, [sys.executable, "-c", code, str(tmp_path / f"{name}.t")])
    for name in names:
        procs.wait_ready(name, (tmp_path / f"{name}.up").exists, timeout=30)
    children.stop_all(grace=30)
    stopped = {name: float((tmp_path / f"{name}.t").read_text()) for name in names}
    assert stopped["redis"] > max(stopped["gateway1"], stopped["gateway2"])
