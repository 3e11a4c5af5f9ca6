"""A full disk is reported as a full disk, naming the path; a re-run with space ends identical.

The disk really fills: the run directory lies on a small tmpfs mounted in a
private mount namespace (``unshare --mount``, which needs root). The
end-to-end tests run ``blockwise run`` (2 local workers) on the gala crop
with too little space, then grow the tmpfs (``mount -o remount``) and run the
same command again, all inside one namespace, and compare the result with an
undisturbed run (``tests/test_integrity.py``'s helpers).

The pieces (daisy's memory-mapped done markers, the failure records, the
SQLite store, atomic writes) are checked on a full tmpfs by this module's
:func:`_checks_on_a_full_disk`, run in a namespace by a child Python.

Where a mount namespace cannot be made (not root, no ``unshare``), the tests
are skipped, except under ``CI=true``, where they fail: CI must run them.
"""

from __future__ import annotations

import errno
import mmap
import os
import pickle
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr
from funlib.geometry import Roi
from test_integrity import assert_identical, gala_data, in_process

from blockwise import failures
from blockwise.atomic import write_atomic
from blockwise.errors import DiskFullError, as_disk_full, disk_full_as_error, mount_point
from blockwise.geometry import IdRange
from blockwise.integrity import TrackingGuard, allocate_tracking, read_done
from blockwise.store.sqlite import SQLiteGraphStore
from blockwise.store.tables import NodeTable

from datafiles import REPO

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="mount namespaces and tmpfs are Linux"
)

BLOCKWISE = str(Path(sys.executable).with_name("blockwise"))
#: the size the tmpfs grows to for the re-run (a whole gala run takes about 17 MiB)
ROOMY = "256m"


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but no full-disk test possible: {message}")
    pytest.skip(message)


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Mount namespaces with tmpfs work here (root, ``unshare``), or the tests skip/fail."""
    if shutil.which("unshare") is None:
        _unavailable("no `unshare` command (util-linux)")
    if os.geteuid() != 0:
        _unavailable("a private tmpfs needs root (unshare --mount)")
    probe = tmp_path_factory.mktemp("probe")
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        _unavailable(f"unshare --mount / mount -t tmpfs failed: {result.stderr.strip()}")


# -- mapping errors to DiskFullError (no disk needed) ------------------------------------


def test_errors_a_full_disk_causes_become_disk_full_errors(tmp_path: Path) -> None:
    chunk = tmp_path / "output.zarr" / "fragments" / "0.1.2"
    named = as_disk_full(OSError(errno.ENOSPC, "No space left on device", str(chunk)), tmp_path)
    assert named is not None and named.path == chunk
    assert named.reason == "no space left on device"
    assert str(named) == (
        f"no space left on device writing {chunk} — free space on {mount_point(tmp_path)} "
        "and run the same command again"
    )
    # it travels between processes whole (pickled)
    assert str(pickle.loads(pickle.dumps(named))) == str(named)
    quota = as_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    assert quota is not None and quota.reason == "disk quota exceeded"
    assert quota.path == tmp_path  # nothing names the file: the default
    assert as_disk_full(OSError(errno.EFBIG, "File too large"), tmp_path) is not None
    full_db = as_disk_full(sqlite3.OperationalError("database or disk is full"), tmp_path)
    assert full_db is not None and full_db.path == tmp_path
    rust = as_disk_full(RuntimeError("writing x: No space left on device (os error 28)"), tmp_path)
    assert rust is not None
    # anywhere in the chain: raised from, or while handling
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise KeyError("0.1.2") from e
    except KeyError as e:
        assert as_disk_full(e, tmp_path) is not None
    # and nothing else
    assert as_disk_full(OSError(errno.EACCES, "Permission denied", "x"), tmp_path) is None
    assert as_disk_full(sqlite3.OperationalError("database is locked"), tmp_path) is None
    assert as_disk_full(ValueError("no space in this name"), tmp_path) is None
    with pytest.raises(ValueError), disk_full_as_error(tmp_path):
        raise ValueError("unrelated")
    with pytest.raises(DiskFullError, match=re.escape(str(chunk))), disk_full_as_error(tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device", str(chunk))


def test_a_write_names_the_file_it_was_writing(tmp_path: Path) -> None:
    """``write()`` errors name no file: the path comes from the writing frame."""
    target = tmp_path / "manifest.json"

    def write_chunk(file_path: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # as os.write raises it

    with pytest.raises(OSError) as raised:
        write_chunk(str(target))
    full = as_disk_full(raised.value, tmp_path)
    assert full is not None and full.path == target


# -- the pieces on a real full disk --------------------------------------------------------


def _fill(mount: Path) -> None:
    """Write a filler file until the tmpfs at ``mount`` is full."""
    with open(mount / "filler", "wb", buffering=0) as f:
        try:
            while f.write(b"\1" * 4096):
                pass
        except OSError as e:
            assert e.errno == errno.ENOSPC, e


def _checks_on_a_full_disk(mount: Path) -> None:
    """Run inside a mount namespace, with an empty 1 MiB tmpfs at ``mount``."""
    tracking = mount / "tracking" / "stage" / "done" / "c" / "0" / "0"
    tracking.mkdir(parents=True)
    kept = tracking / "0"  # as daisy makes it: sized, sparse, mapped into memory
    kept.write_bytes(b"")
    os.truncate(kept, 56)
    assert os.stat(kept).st_blocks == 0
    assert allocate_tracking(mount / "tracking") == [kept]
    assert os.stat(kept).st_blocks > 0
    unbacked = tracking / "1"
    unbacked.write_bytes(b"")
    os.truncate(unbacked, 56)

    db = mount / "graph.sqlite"
    store = SQLiteGraphStore(db)
    store.set_meta("run_name", "full")
    run_dir = mount / "run"
    failures.clear_all(run_dir)  # reserves the slots while there is space
    manifest = mount / "integrity" / "stage.json"
    write_atomic(manifest, "old")
    guard = TrackingGuard(mount / "other_tracking")
    interrupts: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: interrupts.append(signum))
    guard.start()
    _fill(mount)

    # a mapped byte on an allocated page is stored; on an unbacked one it kills the
    # process with SIGBUS (what daisy's scheduler did to the driver)
    with open(kept, "r+b") as f, mmap.mmap(f.fileno(), 56) as mapped:
        mapped[3] = 1
    assert kept.read_bytes()[3] == 1
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mmap, sys; f = open(sys.argv[1], 'r+b'); "
            "m = mmap.mmap(f.fileno(), 56); m[3] = 1",
            str(unbacked),
        ],
        check=False,
    )
    assert child.returncode == -signal.SIGBUS, child.returncode
    with pytest.raises(DiskFullError) as error:
        allocate_tracking(mount / "tracking")
    assert error.value.path == unbacked and error.value.mount == mount

    # daisy creates the files of a new run as its scheduler starts: the guard
    # finds one it cannot back and stops the run as Ctrl-C would
    late = mount / "other_tracking" / "stage" / "failures" / "c" / "0"
    late.parent.mkdir(parents=True)
    late.write_bytes(b"")
    os.truncate(late, 224)
    deadline = time.monotonic() + 10
    while not interrupts and time.monotonic() < deadline:
        time.sleep(0.01)
    guard.stop()
    assert interrupts == [signal.SIGINT]
    assert guard.error is not None and guard.error.path == late

    # the SQLite store says which file, not "database or disk is full"
    nodes = 0
    with pytest.raises(DiskFullError) as error:
        for block in range(1000):
            ids = np.arange(block * 1000 + 1, block * 1000 + 1001, dtype=np.uint64)
            table = NodeTable(ids, np.zeros((1000, 3)), np.ones(1000, dtype=np.int64))
            store.write_nodes(IdRange(block * 1000 + 1, block * 1000 + 1000), table)
            nodes += 1000
    assert error.value.path == db
    assert store.count_nodes() == nodes  # the failed block wrote nothing
    store.close()

    # a failure record goes to a reserved slot; an atomic write leaves no temporary file
    roi = Roi((0, 0, 0), (320, 320, 320))
    disk_full = DiskFullError(mount / "output.zarr" / "fragments" / "0.0.1")
    failures.record_failure(run_dir, "extract_fragments", 7, roi, roi, disk_full, "tb", True)
    recorded = failures.read_failures(run_dir)
    assert [(f.stage, f.block_index, f.error) for f in recorded] == [
        ("extract_fragments", 7, f"disk full: {disk_full.path}")
    ]
    again = failures.read_failure(run_dir, "extract_fragments", 7)
    assert again is not None and again.is_deterministic  # not retried in this run
    with pytest.raises(DiskFullError) as error:
        failures.record_failure(run_dir, "relabel", 1, roi, roi, ValueError("x"), "tb")
    assert error.value.path == run_dir / "failures" / "relabel" / "block_1.json"
    failures.clear_failure(run_dir, "extract_fragments", 7)  # the block succeeded later
    assert failures.read_failures(run_dir) == []
    with pytest.raises(DiskFullError) as error:
        write_atomic(manifest, "new" * 10_000)
    assert error.value.path == manifest and manifest.read_text() == "old"
    leftovers = [p for p in mount.rglob("*") if p.suffix in (".tmp", ".partial")]
    assert leftovers == [], leftovers
    print("all checks passed")


def test_the_pieces_on_a_full_disk(namespaces: None, tmp_path: Path) -> None:
    mount = tmp_path / "disk"
    mount.mkdir()
    code = (
        "import sys; from pathlib import Path; "
        f"sys.path[:0] = [{str(REPO / 'tests')!r}, {str(Path(__file__).parent)!r}]; "
        "import test_full_disk; test_full_disk._checks_on_a_full_disk(Path(sys.argv[1]))"
    )
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            f'mount -t tmpfs -o size=1m tmpfs "$1" && exec "{sys.executable}" -c "$2" "$1"',
            "sh",
            str(mount),
            code,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout


# -- whole runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(gala: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An undisturbed run of the gala config (in-process: the same blocks, same bytes)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    in_process(gala_data(gala, run_dir, "hierarchical"))
    return run_dir


def run_on_a_small_disk(gala: Path, tmp_path: Path, size: str) -> dict[str, Any]:
    """``blockwise run`` on a tmpfs of ``size``, then again after it grew to :data:`ROOMY`.

    Returns:
        per run (1: small disk, 2: roomy) the exit status, stdout and stderr;
        the mount point; the run directory as the first run left it (a copy);
        the run directory after the second run, at its own path again.
    """
    mount = tmp_path / "disk"
    mount.mkdir()
    run_dir = mount / "run"
    config = tmp_path / "gala.yaml"
    config.write_text(yaml.safe_dump(gala_data(gala, run_dir, "hierarchical")))
    out = tmp_path / "out"
    out.mkdir()
    script = f"""
mount -t tmpfs -o size={size} tmpfs "{mount}" || exit 97
"{BLOCKWISE}" run "{config}" --no-progress > "{out}/out1" 2> "{out}/err1"
echo $? > "{out}/rc1"
cp -a "{run_dir}" "{out}/run1" 2>/dev/null
mount -o remount,size={ROOMY} "{mount}" || exit 98
"{BLOCKWISE}" run "{config}" --no-progress > "{out}/out2" 2> "{out}/err2"
echo $? > "{out}/rc2"
cp -a "{run_dir}" "{out}/run2"
"""
    env = dict(os.environ, PYTHONFAULTHANDLER="1")  # a SIGBUS would show where
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # the tmpfs is gone with its namespace: the copy goes back to the run's own
    # path, where the reference comparison expects it (paths inside outputs)
    (out / "run2").rename(run_dir)
    runs: dict[str, Any] = {"mount": mount, "run1": out / "run1", "run_dir": run_dir}
    for n in (1, 2):
        runs[f"rc{n}"] = int((out / f"rc{n}").read_text())
        runs[f"out{n}"] = (out / f"out{n}").read_text()
        runs[f"err{n}"] = (out / f"err{n}").read_text()
    return runs


def assert_quiet(runs: dict[str, Any]) -> None:
    """No traceback and no crash on the terminal, in either run."""
    for n in (1, 2):
        text = runs[f"out{n}"] + runs[f"err{n}"]
        assert "Traceback" not in text, text
        assert "Bus error" not in text and "Fatal Python error" not in text, text


def assert_chunks_whole(run_dir: Path) -> None:
    """Every chunk the first run left decodes, and no temporary file is left."""
    leftovers = [p for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert leftovers == [], leftovers
    output = run_dir / "output.zarr"
    if not output.is_dir():
        return
    arrays: list[zarr.Array] = []
    zarr.open_group(str(output), mode="r").visititems(
        lambda name, obj: arrays.append(obj) if isinstance(obj, zarr.Array) else None
    )
    for array in arrays:
        array[...]  # a truncated chunk would not decode


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_disk_full_mid_stage_names_the_path_and_a_rerun_completes_identically(
    namespaces: None, gala: Path, reference: Path, tmp_path: Path
) -> None:
    # 2 MiB: the outputs of the first stage (extract_fragments) do not fit
    runs = run_on_a_small_disk(gala, tmp_path, "2m")
    mount, run_dir = runs["mount"], runs["run_dir"]
    assert runs["rc1"] == 1, runs["out1"] + runs["err1"]
    assert_quiet(runs)
    out = runs["out1"]
    assert "the disk is full: " in out, out
    assert f"free space on {mount} and run the same command again" in out, out
    # one line per failed block, naming its write ROI and the file it could not write
    lines = re.findall(r"^  (\w+) block (\d+) write ROI (.+): disk full: (\S+)$", out, re.M)
    assert lines, out
    failed = re.search(r"^(\d+) block\(s\) failed:$", out, re.M)
    assert failed is not None and int(failed.group(1)) == len(lines), out
    for _, _, _, path in lines:
        assert Path(path).is_relative_to(run_dir), path
    # no done marker for a block whose output was not written
    for stage, block, _, _ in lines:
        if stage == "extract_fragments":
            done = read_done(runs["run1"] / "tracking" / stage)
            assert done is not None and not done.ravel()[int(block)], (stage, block)
    assert_chunks_whole(runs["run1"])
    # the same command with space: finished blocks kept, the rest run, the result identical
    assert runs["rc2"] == 0, runs["out2"] + runs["err2"]
    skipped = re.search(r"^extract_fragments\s+56\s+(\d+)\s+(\d+)\s+0 ", runs["out2"], re.M)
    assert skipped is not None and int(skipped.group(2)) > 0, runs["out2"]
    assert_identical(run_dir, reference)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_disk_too_full_to_start_is_one_line_and_a_rerun_completes_identically(
    namespaces: None, gala: Path, reference: Path, tmp_path: Path
) -> None:
    # 200 KiB: preparing the run (the output arrays, the store, the reserved
    # failure slots) does not fit
    runs = run_on_a_small_disk(gala, tmp_path, "200k")
    mount, run_dir = runs["mount"], runs["run_dir"]
    assert runs["rc1"] == 2, runs["out1"] + runs["err1"]
    assert_quiet(runs)
    errors = [line for line in runs["err1"].splitlines() if " ERROR: " in line]
    assert len(errors) == 1, runs["err1"]
    message = re.search(r" ERROR: no space left on device writing (\S+) — (.+)$", errors[0])
    assert message is not None, errors[0]
    assert Path(message.group(1)).is_relative_to(run_dir), errors[0]
    assert message.group(2) == f"free space on {mount} and run the same command again"
    assert_chunks_whole(runs["run1"])
    assert runs["rc2"] == 0, runs["out2"] + runs["err2"]
    assert_identical(run_dir, reference)
