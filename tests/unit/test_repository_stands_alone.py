"""A clone needs nothing beside it: no tracked file may point outside the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = ".." + "/shared"  # spelled in two parts so this file does not match itself


def tracked_files() -> list[Path]:
    """Every file git tracks, plus the untracked ones it does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_tracked_file_refers_to_the_shared_folder_outside_the_repository():
    offenders = []
    for path in tracked_files():
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:4096]:
            continue  # binary (Avro fixtures)
        if OUTSIDE.encode() in data:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_readme_demo_files_are_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    for name in ("examples/firehose-subscription.json", "examples/firehose-membership.json"):
        assert name in readme
        assert (ROOT / name).is_file()
