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
