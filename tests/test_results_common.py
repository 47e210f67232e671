"""benchmarks/common.py: the helpers every results script shares (one torch thread, locked section writes)."""

import fcntl
import os
import threading

import torch

from .conftest import load_script


def test_one_thread_pins_torch_and_names_the_machine():
    common = load_script("common")
    torch.set_num_threads(2)
    where = common.one_thread("cpu")
    assert torch.get_num_threads() == common.RESULTS_THREADS == 1
    assert where.endswith("(no GPU, 1 torch thread)")


def test_write_section_replaces_its_own_section_and_keeps_the_rest(tmp_path):
    common = load_script("common")
    out = tmp_path / "results.md"
    out.write_text("# Results\n\nprose\n\n<!-- a:begin -->\nold a\n<!-- a:end -->\n\nreading of a\n")
    common.write_section(out, "<!-- b:begin -->\nb\n<!-- b:end -->\n", "<!-- b:begin -->", "<!-- b:end -->")
    common.write_section(
        out, "<!-- a:begin -->\nnew a\n<!-- a:end -->\n", "<!-- a:begin -->", "<!-- a:end -->"
    )
    assert out.read_text() == (
        "# Results\n\nprose\n\n<!-- a:begin -->\nnew a\n<!-- a:end -->\n\nreading of a\n\n"
        "<!-- b:begin -->\nb\n<!-- b:end -->\n"
    )


def test_write_section_waits_for_a_writer_holding_the_lock(tmp_path):
    """Two scripts finishing at once (`make -j2 results`) must not drop each other's section: a writer
    waits while another holds the folder's lock, then reads the file as the other left it."""
    common = load_script("common")
    out = tmp_path / "results.md"
    out.write_text("# Results\n")
    held = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    writer = threading.Thread(
        target=common.write_section, args=(out, "<!-- x:begin -->\n", "<!-- x:begin -->", "<!-- x:end -->")
    )
    try:
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive() and out.read_text() == "# Results\n"  # blocked, nothing written
        out.write_text("# Results\n\nwritten by the lock holder\n")
    finally:
        os.close(held)
    writer.join(timeout=30)
    assert not writer.is_alive()
    assert out.read_text() == "# Results\n\nwritten by the lock holder\n\n<!-- x:begin -->\n"


def test_cached_computes_a_step_once_when_two_workers_want_it(tmp_path):
    """`--jobs 2`: two workers asking for the same step at once compute it once; the second waits on the
    step's lock and reads the stored result."""
    common = load_script("common")
    calls, started, release = [], threading.Event(), threading.Event()

    def slow():
        calls.append(1)
        started.set()
        release.wait(timeout=30)
        return {"miou": 0.5}

    path = tmp_path / "results" / "seg-x.json"
    path.parent.mkdir()
    got = []
    first = threading.Thread(target=lambda: got.append(common.cached(path, slow)))
    second = threading.Thread(target=lambda: got.append(common.cached(path, lambda: {"miou": 0.9})))
    first.start()
    assert started.wait(timeout=30)
    second.start()
    second.join(timeout=1.0)
    assert second.is_alive() and not path.exists()  # waiting on the lock, not computing its own
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert got == [{"miou": 0.5}, {"miou": 0.5}] and calls == [1]


def test_step_lock_is_exclusive_per_name(tmp_path):
    common = load_script("common")
    order = []

    def take():
        with common.step_lock(tmp_path, "syn-8"):
            order.append("b")

    with common.step_lock(tmp_path, "syn-8"):
        other = threading.Thread(target=take)
        other.start()
        with common.step_lock(tmp_path, "head-8"):  # another step's lock is free
            order.append("a")
        other.join(timeout=1.0)
        assert other.is_alive() and order == ["a"]
    other.join(timeout=30)
    assert order == ["a", "b"] and (tmp_path / "locks" / "syn-8.lock").exists()
