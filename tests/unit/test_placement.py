"""The placement rule: exclusive GPUs, queue order, pinned sets, no starvation (pure, no I/O)."""

from supervisor.placement import Holder, Request, impossible, place


def job(name, submitted, count=0, pinned=(), priority=0):
    return Request(job=name, submitted=submitted, count=count, pinned=tuple(pinned), priority=priority)


def held(**by_gpu):
    return {int(g[1:]): Holder(j, f"job {j}") for g, j in by_gpu.items()}


def test_two_jobs_never_get_one_gpu():
    out = place([job("a", 1, pinned=[0]), job("b", 2, pinned=[0])], [0, 1], {})
    assert out.starts == [("a", (0,))]
    assert out.waits == {"b": "waiting for GPU 0 (job a)"}


def test_a_busy_gpu_is_named_with_its_holder():
    out = place([job("b", 2, pinned=[1])], [0, 1], held(g1="coco"))
    assert out.waits["b"] == "waiting for GPU 1 (job coco)"
    foreign = {0: Holder(None, "pids 77 (3000 MiB), not our jobs")}
    out = place([job("c", 3, count=2)], [0, 1], foreign)
    assert "GPU 0 (pids 77 (3000 MiB), not our jobs)" in out.waits["c"]


def test_gpus_n_takes_the_lowest_free_ones():
    out = place([job("a", 1, count=2)], [0, 1, 2, 3], held(g0="x"))
    assert out.starts == [("a", (1, 2))]


def test_a_job_is_not_kept_from_its_own_gpus():
    assert place([job("a", 1, pinned=[0, 1])], [0, 1], held(g0="a", g1="a")).starts == [("a", (0, 1))]


def test_priority_jumps_the_queue_then_submission_order():
    out = place([job("old", 1, count=1), job("urgent", 9, count=1, priority=5), job("new", 5, count=1)], [0], {})
    assert out.starts == [("urgent", (0,))]
    assert set(out.waits) == {"old", "new"}
    out = place([job("new", 5, count=1), job("old", 1, count=1)], [0], {})
    assert out.starts == [("old", (0,))]


def test_a_job_waiting_for_several_gpus_is_not_starved_by_one_gpu_jobs():
    """GPUs freed while the big job waits are kept for it: a stream of small jobs behind it gets none."""
    small = [job(f"s{i}", 10 + i, count=1) for i in range(5)]
    big = job("big", 1, count=2)
    # GPU 1 frees up while GPU 0 is still busy: the big job keeps it, no small job starts.
    out = place([big, *small], [0, 1], held(g0="x"))
    assert out.starts == []
    assert "kept for big" in out.waits["s0"]
    # Then GPU 0 frees up: the big job starts on both.
    assert place([big, *small], [0, 1], {}).starts == [("big", (0, 1))]


def test_jobs_behind_a_waiting_one_may_use_gpus_it_does_not_want():
    out = place([job("pinned", 1, pinned=[0]), job("small", 2, count=1)], [0, 1], held(g0="x"))
    assert out.starts == [("small", (1,))]
    assert out.waits["pinned"] == "waiting for GPU 0 (job x)"


def test_what_the_inventory_can_never_give_waits_with_the_reason_and_reserves_nothing():
    out = place([job("huge", 1, count=3), job("lost", 2, pinned=[7]), job("fits", 3, count=2)], [0, 1], {})
    assert out.starts == [("fits", (0, 1))]
    assert "needs 3 GPUs, the daemon has 2" in out.waits["huge"]
    assert "GPU 7 is not among the daemon's GPUs (0,1)" in out.waits["lost"]
    assert impossible(job("ok", 1, count=2), [0, 1]) is None


def test_cpu_jobs_take_no_gpu_and_slots_bound_every_start():
    out = place([job("cpu1", 1), job("g", 2, count=1), job("cpu2", 3)], [0], {}, slots=2)
    assert out.starts == [("cpu1", ()), ("g", (0,))]
    assert out.waits == {"cpu2": "waiting for a free slot (max_running reached)"}


def test_a_cpu_job_ahead_stops_no_one_behind_it():
    out = place([job("cpu", 1), job("g", 2, count=1), job("cpu2", 3)], [0], {})
    assert out.starts == [("cpu", ()), ("g", (0,)), ("cpu2", ())] and out.waits == {}


def test_a_waiting_pinned_job_keeps_only_its_free_gpus():
    foreign = {0: Holder(None, "pids 77 (3000 MiB), not our jobs")}
    out = place([job("a", 1, pinned=[0, 1]), job("b", 2, count=1)], [0, 1, 2], foreign)
    assert out.starts == [("b", (2,))]                        # GPU 1 is kept for a; GPU 2 is free
    assert out.waits == {"a": "waiting for GPU 0 (pids 77 (3000 MiB), not our jobs)"}


def test_the_waiting_reasons_word_for_word():
    out = place([job("a", 1, pinned=[0, 1]), job("b", 2, count=1), job("c", 3, count=2)], [0, 1],
                held(g0="x", g1="y"))
    assert out.waits == {"a": "waiting for GPU 0 (job x), GPU 1 (job y)",
                         "b": "waiting for 1 free GPU: GPU 0 (job x), GPU 1 (job y)",
                         "c": "waiting for 2 free GPUs: GPU 0 (job x), GPU 1 (job y)"}
    five = held(g0="a", g1="b", g2="c", g3="d", g4="e")
    out = place([job("w", 1, count=2)], range(5), five)
    assert out.waits["w"] == "waiting for 2 free GPUs: GPU 0 (job a), GPU 1 (job b), GPU 2 (job c), GPU 3 (job d), ..."
    four = held(g0="a", g1="b", g2="c", g3="d")
    out = place([job("w", 1, count=1)], range(4), four)
    assert out.waits["w"] == "waiting for 1 free GPU: GPU 0 (job a), GPU 1 (job b), GPU 2 (job c), GPU 3 (job d)"


def test_an_impossible_request_says_what_the_daemon_has():
    assert impossible(job("p", 1, pinned=[2]), []) == (
        "waiting: GPU 2 is not among the daemon's GPUs (none); edit the job's device or the daemon's `gpus`")
    assert impossible(job("n", 1, count=3), [0, 1]) == "waiting: needs 3 GPUs, the daemon has 2 (0,1)"


def test_every_job_past_the_slots_is_told_why_it_waits():
    out = place([job("a", 1), job("b", 2), job("c", 3, count=1)], [0], {}, slots=1)
    assert out.starts == [("a", ())]
    assert out.waits == {"b": "waiting for a free slot (max_running reached)",
                         "c": "waiting for a free slot (max_running reached)"}
