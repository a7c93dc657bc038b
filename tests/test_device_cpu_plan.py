"""The CPU plan (SPEC §6): intra-op threads and loader workers from a measured step and batch load, as pure
arithmetic on given timings; the plan that times a real step is in test_device.py."""

from __future__ import annotations

import itertools

import pytest

from sustain.device import CpuPlan, _seconds, _step, plan_cpu


def test_cpu_plan_gives_the_cores_to_compute_when_the_step_dominates():
    # resnet18-like: a 1.7 s step on one thread, a 50 ms batch load, 2 cores.
    plan = plan_cpu(cores=2, step_seconds=1.7, step_threads=1, load_seconds=0.05, max_threads=2)
    assert (plan.threads, plan.workers) == (2, 0)
    assert "compute-bound" in plan.reason and "2 compute thread(s), 0 loader worker(s)" in plan.line
    # 16 cores: most go to compute, a worker or two keep up with the light loading.
    big = plan_cpu(cores=16, step_seconds=1.0, step_threads=1, load_seconds=0.5, max_threads=16)
    assert big.threads >= 12 and 1 <= big.workers <= 4 and big.threads + big.workers <= 16


def test_cpu_plan_reads_a_step_timed_on_two_threads_as_that_step_on_two_threads():
    # resnet18 at 128 px: 535 ms forward and backward, timed on 2 threads; loading a batch 45 ms.
    plan = plan_cpu(cores=2, step_seconds=0.535, step_threads=2, load_seconds=0.045, max_threads=2)
    assert (plan.threads, plan.workers) == (2, 0)
    assert "a step takes 535 ms on 2 thread(s)" in plan.reason
    assert plan.batch_seconds == pytest.approx(0.535 + 0.045)
    # test_resnet on camera photos: 162 ms on 2 threads, 47 ms per batch. One thread would take
    # 162 / 0.55 = 295 ms, slower than 2 threads plus loading in between (209 ms).
    photos = plan_cpu(cores=2, step_seconds=0.162, step_threads=2, load_seconds=0.047, max_threads=2)
    assert (photos.threads, photos.workers) == (2, 0)


def test_cpu_plan_gives_the_cores_to_loading_when_loading_dominates():
    # the demo model: a 20 ms step, a 300 ms batch load. Both cores load, and the one compute thread
    # shares a core with a worker: a batch every ~186 ms instead of the 300 one worker takes.
    plan = plan_cpu(cores=2, step_seconds=0.02, step_threads=2, load_seconds=0.3, max_threads=2)
    assert (plan.threads, plan.workers) == (1, 2)
    assert "loading-bound" in plan.reason and "they share the cores" in plan.reason
    assert plan.batch_seconds < 0.2
    # issue #25, camera photos with the image cache off: 1,923 ms to load a batch, a 280 ms step.
    # One worker left a core to the thread and took 1.9 s a batch; two take about 1.2 s.
    photos = plan_cpu(cores=2, step_seconds=0.28, step_threads=1, load_seconds=1.923, max_threads=2)
    assert (photos.threads, photos.workers) == (1, 2) and photos.batch_seconds == pytest.approx(0.28 + 1.923 / 2)
    big = plan_cpu(cores=16, step_seconds=0.02, step_threads=16, load_seconds=0.3, max_threads=16)
    assert big.workers == 8 and big.threads + big.workers <= 16  # capped at 8 workers


def test_cpu_plan_shares_a_core_only_between_workers_and_one_thread_and_respects_the_users_settings():
    for cores, step, load, cap, world in itertools.product((1, 2, 4, 16), (0.01, 0.3, 3.0), (0.01, 0.3, 3.0),
                                                           (1, 2, 16), (1, 2)):
        plan = plan_cpu(cores=cores, step_seconds=step, step_threads=1, load_seconds=load, max_threads=cap,
                        world_size=world)
        share = max(1, cores // world)
        assert plan.threads <= cap
        # two or more intra-op threads never share a core; one thread may, with loading workers
        assert plan.threads + plan.workers <= share or (plan.threads == 1 and plan.workers == share)
    # OMP_NUM_THREADS=1 on 8 cores: one thread, and the other cores load.
    capped = plan_cpu(cores=8, step_seconds=1.0, step_threads=1, load_seconds=1.0, max_threads=1)
    assert capped.threads == 1 and capped.workers >= 1 and "capped at 1" in capped.reason
    # data.num_workers set by the user is kept; the threads are planned around its measured load.
    fixed = plan_cpu(cores=2, step_seconds=1.7, step_threads=1, load_seconds=0.05, max_threads=2, workers=1)
    assert (fixed.threads, fixed.workers) == (2, 1)


def test_user_set_workers_idle_most_of_the_time_do_not_take_the_compute_cores():
    # issue #25: num_workers 2 on 2 cores, a 57 ms load against a 1,056 ms step on one thread. The old
    # plan gave compute 1 thread (0.64x timm); the workers are busy ~5% of the time: 2 threads.
    plan = plan_cpu(cores=2, step_seconds=1.056, step_threads=1, load_seconds=0.057, max_threads=2, workers=2)
    assert (plan.threads, plan.workers) == (2, 2)
    assert "they share the cores" in plan.reason and "costs speed" not in plan.reason
    # Loading-bound workers the user set: too few for the load, and the line says what auto would do.
    slow = plan_cpu(cores=4, step_seconds=0.02, step_threads=1, load_seconds=0.6, max_threads=4, workers=1)
    assert slow.workers == 1
    assert "data.num_workers: 1 costs speed: auto would plan 1 thread(s) and 4 worker(s)" in slow.line


def test_the_predicted_batch_time_adds_the_overflowing_workers_load_to_the_step() -> None:
    assert (_step(1.0, 1), _step(1.0, 2), _step(2.0, 4)) == pytest.approx((1.0, 0.55, 0.65))  # Amdahl, 90% parallel
    assert _seconds(0.5, 0.3, threads=2, workers=0, share=2) == pytest.approx(0.8)  # no worker: load, then step
    assert _seconds(0.1, 0.9, threads=1, workers=2, share=4) == pytest.approx(0.45)  # two workers keep up
    # 3 threads + 2 workers on 4 cores: one worker's core is shared, half the load lands on the step
    assert _seconds(0.5, 0.4, threads=3, workers=2, share=4) == pytest.approx(0.7)
    assert _seconds(0.5, 0.4, threads=4, workers=2, share=2) == pytest.approx(0.9)  # at most all of it


def test_cpu_plan_in_full_word_for_word() -> None:
    assert plan_cpu(cores=2, step_seconds=1.7, step_threads=1, load_seconds=0.05, max_threads=2) == CpuPlan(
        2, 0, pytest.approx(1.7 * 0.55 + 0.05), "a step takes 935 ms on 2 thread(s), loading a batch 50 ms on one "
                                                "core; 2 core(s) per process, compute-bound")
    # one thread loads exactly as fast as the step runs: loading-bound, at the cap OMP_NUM_THREADS set
    capped = plan_cpu(cores=8, step_seconds=1.0, step_threads=1, load_seconds=1.0, max_threads=1)
    assert capped.reason == ("a step takes 1000 ms on 1 thread(s), loading a batch 1000 ms on one core; 8 core(s) "
                             "per process, loading-bound (threads capped at 1 by torch.set_num_threads / "
                             "OMP_NUM_THREADS)")
    # two workers the user set, each loading a batch in half the step: compute-bound
    kept = plan_cpu(cores=4, step_seconds=1.0, step_threads=1, load_seconds=0.5, max_threads=4, workers=2)
    assert (kept.threads, kept.workers) == (2, 2) and "4 core(s) per process, compute-bound;" in kept.reason


def test_the_users_workers_are_called_slower_only_past_five_percent() -> None:
    slow = plan_cpu(cores=4, step_seconds=0.02, step_threads=1, load_seconds=0.6, max_threads=4, workers=1)
    assert slow.line.endswith("loading-bound; data.num_workers: 1 costs speed: auto would plan 1 thread(s) and 4 "
                              "worker(s), 170 ms per batch against 600 ms")
    half = plan_cpu(cores=2, step_seconds=0.01, step_threads=1, load_seconds=0.01, max_threads=1, workers=2)
    assert half.line.endswith("1 thread(s) and 1 worker(s), 10 ms per batch against 15 ms")  # 1.5x: said
    near = plan_cpu(cores=2, step_seconds=0.07, step_threads=1, load_seconds=0.15, max_threads=2, workers=1)
    auto = plan_cpu(cores=2, step_seconds=0.07, step_threads=1, load_seconds=0.15, max_threads=2)
    assert (near.threads, near.workers) == (1, 1) and (auto.threads, auto.workers) == (1, 2)
    # 3% slower than auto: not worth a word
    assert auto.batch_seconds < near.batch_seconds < auto.batch_seconds * 1.05 and "costs speed" not in near.line
    # exactly 1.05x (21 ms against 20, equal to the last bit) is not past it
    edge = plan_cpu(cores=2, step_seconds=0.02, step_threads=1, load_seconds=0.01, max_threads=2, workers=0)
    best = plan_cpu(cores=2, step_seconds=0.02, step_threads=1, load_seconds=0.01, max_threads=2)
    assert edge.batch_seconds == best.batch_seconds * 1.05 and "costs speed" not in edge.line


def test_among_equally_fast_plans_fewer_processes_then_more_threads_win() -> None:
    # loading-bound on 8 cores with 2 workers at most: 1 to 6 threads all wait on the load; one is enough
    few = plan_cpu(cores=8, step_seconds=0.01, step_threads=1, load_seconds=0.3, max_threads=8, max_workers=2)
    assert (few.threads, few.workers) == (1, 2)
    # 2 threads (0.45 + 0.55 s) and 1 thread + 1 worker (max(1.0, 0.45) s) tie: the threads win. A 30 µs
    # difference is timing noise, under the 0.1 ms the plans are compared at.
    for load in (0.45, 0.45003):
        tie = plan_cpu(cores=2, step_seconds=1.0, step_threads=1, load_seconds=load, max_threads=2)
        assert (tie.threads, tie.workers) == (2, 0), load


def test_the_plan_line_says_how_busy_shared_workers_are_and_when_the_cap_binds() -> None:
    shared = plan_cpu(cores=2, step_seconds=1.056, step_threads=1, load_seconds=0.057, max_threads=2, workers=2)
    assert shared.reason == ("a step takes 581 ms on 2 thread(s), loading a batch 57 ms on one core; 2 core(s) per "
                             "process, compute-bound (the 2 worker(s) are busy 4% of the time: they share the cores)")
    # OMP_NUM_THREADS=1 on 2 cores, loading-bound: the workers take both cores, so the cap costs nothing
    # and goes unsaid
    fits = plan_cpu(cores=2, step_seconds=0.02, step_threads=2, load_seconds=0.3, max_threads=1)
    assert (fits.threads, fits.workers) == (1, 2) and "capped" not in fits.reason
    slow = plan_cpu(cores=4, step_seconds=0.1, step_threads=1, load_seconds=3.0, max_threads=4, workers=1)
    assert slow.line.endswith("auto would plan 1 thread(s) and 4 worker(s), 850 ms per batch against 3000 ms")
