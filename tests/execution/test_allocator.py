"""keep_freed_memory: a worker's second block of the same size faults in no new pages."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from blockwise.execution.allocator import keep_freed_memory

    if sys.argv[1] == "tuned":
        assert keep_freed_memory()

    def block():
        # what a block does: large arrays, written, then freed
        for _ in range(3):
            a = np.empty(40 << 20, dtype=np.uint8)
            a.fill(1)
            del a

    block()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def faults_of_second_block(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_second_block_reuses_the_pages_of_the_first() -> None:
    # 3 x 40 MiB = 30720 pages of 4 KiB. glibc keeps a freed array below 32 MiB in
    # its heap by itself (its threshold follows the largest freed mapping up to
    # that cap), so the arrays are larger: untuned, each is mapped and unmapped
    # again and its pages faulted in anew (the control that shows the test can fail;
    # numpy asks for huge pages for large arrays, so about 1600 faults, not 30720)
    untuned = faults_of_second_block("default")
    tuned = faults_of_second_block("tuned")
    assert tuned < 100, f"the tuned worker faulted in {tuned} pages for its second block"
    assert untuned > 1000, f"untuned: {untuned} faults (the control should fault them in)"


def test_tuning_starts_no_process() -> None:
    # ctypes.util.find_library("c") ran `ldconfig -p` in every worker before its
    # first block; the C library's symbols are the process's own
    script = textwrap.dedent(
        """
        import subprocess
        from blockwise.execution.allocator import keep_freed_memory
        def refuse(*args, **kwargs):
            raise AssertionError(f"started a process: {args}")
        subprocess.Popen.__init__ = refuse
        assert keep_freed_memory()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
