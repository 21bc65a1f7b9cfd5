"""The benchmark's tail report (scripts/bench/tail.py): slow requests grouped into bursts
by when they were scheduled, and the machine's counters over each burst against the rest
of the window."""

from scripts.bench.tail import EVERY, Sample, bursts, explain


def sample(at: float, steal: float = 0.0, server: float = 0.0) -> Sample:
    """The server is all that runs; `steal` is what the hypervisor took, cumulative."""
    return Sample(at, steal, server, 0.0, 0.0, 0, {"server": server}, {"server": 0.0})


def test_slow_requests_close_together_are_one_burst() -> None:
    found = bursts(100.0, [(5.0, 0.02), (5.01, 0.05), (5.2, 0.012), (9.0, 0.03)])
    assert [(b.start, b.count, b.worst) for b in found] == [
        (105.0, 2, 0.05),
        (105.2, 1, 0.012),
        (109.0, 1, 0.03),
    ]
    assert abs(found[0].end - 105.06) < 1e-9  # the last answer of the burst


def test_a_burst_is_laid_beside_what_the_machine_did_then() -> None:
    samples = []
    steal = busy = 0.0
    for i in range(int(4 / EVERY) + 1):
        at = 100.0 + i * EVERY
        stolen = 2.0 <= at - 100.0 < 2.2  # the hypervisor took 0.2 s of a core here
        steal += 0.8 * EVERY if stolen else 0.0
        busy += 0.1 * EVERY if stolen else 0.5 * EVERY
        samples.append(sample(at, steal, busy))
    lines = explain((100.0, 104.0), [(2.0, 0.03), (2.1, 0.04)], samples, 0.01)
    assert lines[0].startswith("2 requests over 10 ms in 1 burst spanning 0.14 s in all; ")
    assert "2 of them in bursts where the hypervisor took 20%+" in lines[0]
    assert "+2.00 s for 0.14 s: 2 slow, worst 40 ms" in lines[1]
    assert "steal 80%" in lines[1] and "server ran 10%" in lines[1]
    assert "steal 0%" in lines[2] and "server ran 50%" in lines[2]
    assert "everything else 0%" in lines[2]


def test_no_slow_request_says_so() -> None:
    assert explain((0.0, 1.0), [], [], 0.01) == ["no request over 10 ms"]


def test_a_burst_names_the_other_processes_that_ran_then() -> None:
    """'everything else' broken down by process name, from the scans around the burst."""
    samples = []
    java = pg = 0.0
    for i in range(int(4 / EVERY) + 1):
        at = 100.0 + i * EVERY
        busy = 2.0 <= at - 100.0 < 2.5  # the JVM took 80% of a core here
        java += 0.8 * EVERY if busy else 0.01 * EVERY
        pg += 0.02 * EVERY
        scan = {7: ("java", java), 8: ("postgres", pg)} if i % 5 == 0 else None
        samples.append(
            Sample(at, 0.0, java + pg, 0.0, 0.0, 0, {"server": 0.0}, {"server": 0.0}, scan)
        )
    lines = explain((100.0, 104.0), [(2.1, 0.03), (2.15, 0.04)], samples, 0.01)
    assert "(over 0.25 s: java 80%)" in lines[1]  # postgres, under 5% of a core, not named
    assert "java" not in lines[2]  # the calm part has no scans of its own
