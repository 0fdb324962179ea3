#!/usr/bin/env python3
"""Build (or reuse) the agent's release on the controller: the project's wheel plus a
wheelhouse of every dependency, packed into one tar for an offline install on the hosts.

    mailpacer_build_wheelhouse.py SOURCE_DIR CACHE_DIR [--python PYTHON] [--rebuild]

The release id is ``<version>-<hash>``; the hash covers pyproject.toml and every file of the
package (agent/), so the same source gives the same release (the run stays idempotent) and any
code change gives a new one. A release is built in a temporary directory and renamed into
``CACHE_DIR/<id>/`` only when complete, so a failed build never leaves a usable-looking cache
entry. Dependencies are resolved once per release id (pinned in ``requirements.txt`` inside the
tar); ``--rebuild`` resolves them again.

Prints one JSON object: release, version, tarball, wheels, python (major.minor of the build
interpreter; the hosts' python3 must match for wheels with C extensions), platform, built.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")


def package_files(source: Path) -> list[Path]:
    files = [source / "pyproject.toml"]
    for root, dirs, names in os.walk(source / "agent"):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        files += [Path(root) / n for n in sorted(names) if not n.endswith(SKIP_SUFFIXES)]
    return files


def source_hash(source: Path, python: str) -> str:
    digest = hashlib.sha256()
    digest.update(f"python {python}\n".encode())
    for path in package_files(source):
        digest.update(str(path.relative_to(source)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def interpreter(python: str) -> tuple[str, str]:
    code = "import platform, sys; print('%d.%d' % sys.version_info[:2], platform.machine())"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    version, machine = out.stdout.split()
    return version, machine


def build(source: Path, target: Path, python: str) -> None:
    """pip wheel the project and its dependencies into target/wheelhouse, from a copy of the
    source (the work tree is never written to), then pack them into target/wheelhouse.tar."""
    work = target / "src"
    work.mkdir()
    shutil.copy2(source / "pyproject.toml", work)
    for extra in ("README.md", "LICENSE"):
        if (source / extra).exists():
            shutil.copy2(source / extra, work)
    shutil.copytree(
        source / "agent",
        work / "agent",
        ignore=shutil.ignore_patterns(*SKIP_DIRS, "*.pyc", "*.egg-info"),
    )
    wheelhouse = target / "wheelhouse"
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheelhouse), str(work)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"pip wheel failed (exit {proc.returncode}) for {source}")
    shutil.rmtree(work)
    pins = []
    for wheel in sorted(wheelhouse.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        pins.append(f"{name.replace('_', '-').lower()}=={version}")
    (wheelhouse / "requirements.txt").write_text("\n".join(pins) + "\n")
    with tarfile.open(target / "wheelhouse.tar", "w") as tar:
        for path in sorted(wheelhouse.iterdir()):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 315532800, 0, 0, "root", "root"
            info.mode = 0o644
            with path.open("rb") as handle:
                tar.addfile(info, handle)


def prune(cache: Path, keep: int, current: Path) -> None:
    """Keep the newest ``keep`` releases in the cache (and always ``current``)."""
    releases = sorted(
        (p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in releases[keep:]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("cache", type=Path)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--keep", type=int, default=5, help="releases kept in the cache")
    args = parser.parse_args()
    source = args.source.resolve()
    meta = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    name, version = meta["name"], meta["version"]
    python, machine = interpreter(args.python)
    release = f"{version}-{source_hash(source, python)}"
    if not re.fullmatch(r"[0-9A-Za-z.+_-]+", release):
        raise SystemExit(f"unusable release id {release!r}")
    args.cache.mkdir(parents=True, exist_ok=True)
    final = args.cache / release
    built = False
    if args.rebuild or not (final / "wheelhouse.tar").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".{release}.", dir=args.cache))
        try:
            build(source, tmp, args.python)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        built = True
        prune(args.cache, keep=args.keep, current=final)
    wheels = sorted(p.name for p in (final / "wheelhouse").glob("*.whl"))
    result = {
        "name": name,
        "release": release,
        "version": version,
        "tarball": str(final / "wheelhouse.tar"),
        "wheels": wheels,
        "python": python,
        "platform": machine,
        "built": built,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
