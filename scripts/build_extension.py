"""Build the installable Blender extension zip.

    python scripts/build_extension.py --out DIR [--no-wheels] [--split-platforms] [--cache-dir DIR]

The zip's root is blender_addon/ (manifest at the top, as Blender requires), with protocol/ vendored as
``_vendor/protocol`` (the add-on imports it through ``_deps``) and the wheels of ``PACKAGES`` (pyzmq + msgpack
for the backend connection, Pillow for .sog's WebP images) under ``wheels/`` for the Pythons Blender ships
(3.11 for 4.2-5.0, 3.13 for 5.1+) on Linux x86_64, Windows x64 and macOS arm64/x86_64, fetched with
``pip download --only-binary=:all:``. The manifest in the zip lists exactly the wheel files that were
downloaded, and ``platforms`` lists the platforms they cover. ``--split-platforms`` writes one zip per platform
instead (``interactive3d-<version>-<platform>.zip``, only that platform's wheels: what Blender's own
``extension build --split-platforms`` does to keep downloads small). ``--no-wheels`` (offline builds, tests)
bundles none: that add-on then needs pyzmq and msgpack (and Pillow for .sog) available in Blender's Python some
other way, and says so on the terminal.

zstandard (.spz version 4) is *not* bundled: every Blender ships it in its own Python (it reads ZSTD-compressed
.blend files; the bpy module on PyPI requires it), and Blender puts the extensions' site-packages *before* its
own, so a bundled copy would replace Blender's for Blender itself and every add-on. ``BLENDER_SHIPS`` lists such
packages; a test checks it against each tested bpy's requirements.

The installed versions of the packages are pinned (same versions as development) unless ``--unpinned``.
Blender 4.2.0's installer picks bundled wheels by platform only and keeps one per package,
the highest version (ties: the greatest file name, so a cp312-abi3 or cp313 wheel beat cp311 and did not
load in its Python 3.11); 4.2.1+ also match the Python tag. So the wheels for the newer Pythons are the
newest release *below* the Python 3.11 one: every Blender then installs a wheel that loads
(:func:`blender_4_2_0_pick` re-implements 4.2.0's choice). ``PYTHONS`` covers the Python of every bpy the
add-on is tested on (tests/blender_addon/conftest.py's BPY_MATRIX; a test checks it). Install the result with
Blender's "Install from Disk" or ``blender --command extension install-file -r user_default -e ZIP``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("build_extension")
ROOT = Path(__file__).resolve().parents[1]
ADDON, PROTOCOL = ROOT / "blender_addon", ROOT / "protocol"
PACKAGES = ("pyzmq", "msgpack", "pillow")
PYTHONS = ("3.11", "3.13")
# In Blender's own Python (its build's Python modules; PyPI's bpy requires them): never bundled (module docstring).
BLENDER_SHIPS = ("numpy", "zstandard", "requests", "cython", "cattrs", "attrs", "certifi", "charset-normalizer", "idna",
                 "urllib3")


@dataclass(frozen=True)
class Platform:
    """A Blender platform name and the pip platform tags whose wheels run there."""

    blender: str
    pip_tags: tuple[str, ...]
    arch_tag: str = ""  # macOS: the tag a universal2 wheel is given (Blender 4.2.0 skips universal2 wheels)


PLATFORMS = (
    Platform("linux-x64", ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")),
    Platform("windows-x64", ("win_amd64",)),
    Platform("macos-arm64", ("macosx_11_0_arm64", "macosx_10_15_universal2", "macosx_10_9_universal2"), "arm64"),
    Platform("macos-x64", ("macosx_10_15_x86_64", "macosx_10_9_x86_64", "macosx_10_9_universal2"), "x86_64"),
)
_EXCLUDE = re.compile(r"(__pycache__|\.pyc$|\.pyo$|^\.)")


def _version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def download_wheels(dest: Path, cache_dir: Path | None, pinned: bool = True, pip: tuple[str, ...] | None = None
                    ) -> tuple[list[Path], dict[str, list[str]]]:
    """Download one wheel per (package, Python, platform) into ``dest``.

    Returns (the distinct wheel files, Blender platform → the names of its wheels, for each platform on which
    every package and Python got a wheel). Raises RuntimeError with pip's message when a download fails.
    ``cache_dir`` keeps pip's downloads between builds (a file already there is not fetched again).
    """
    pip = pip or (sys.executable, "-m", "pip")
    dest.mkdir(parents=True, exist_ok=True)
    if set(PACKAGES) & set(BLENDER_SHIPS):
        raise RuntimeError(f"{sorted(set(PACKAGES) & set(BLENDER_SHIPS))} ship with Blender: bundling them "
                           "would replace Blender's own copy")
    files: dict[str, Path] = {}
    covered: dict[str, list[str]] = {}
    for plat in PLATFORMS:
        ok = True
        names: list[str] = []
        oldest: dict[str, str] = {}  # package → version of its wheel for PYTHONS[0]
        for py in PYTHONS:
            for package in PACKAGES:
                version = _version_of(package) if pinned else None
                if py == PYTHONS[0]:
                    req = f"{package}=={version}" if version else package
                elif package in oldest:  # below the oldest Python's wheel: Blender 4.2.0 then keeps that one
                    req, version = f"{package}<{oldest[package]}", None
                else:
                    ok = False
                    continue
                target = (cache_dir or dest / ".pip") / f"{package}-py{py}-{plat.blender}"
                target.mkdir(parents=True, exist_ok=True)
                before = set(target.iterdir())
                cmd = [*pip, "download", "--only-binary=:all:", "--no-deps", "--disable-pip-version-check",
                       "--python-version", py, "--implementation", "cp", "-d", str(target), req]
                for tag in plat.pip_tags:
                    cmd += ["--platform", tag]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"pip download {req} for Python {py} on {plat.blender} failed:\n"
                                       f"{proc.stderr.strip()[-2000:]}")
                wheel = _wheel_from_pip_output(proc.stdout, target, package, version, before)
                if wheel is None:
                    ok = False
                    log.warning("no %s wheel for Python %s on %s", package, py, plat.blender)
                    continue
                if wheel.name[:-4].endswith("universal2") and plat.arch_tag:
                    wheel = retag_universal2(wheel, plat.arch_tag, target)
                files.setdefault(wheel.name, wheel)
                names.append(wheel.name)
                if py == PYTHONS[0]:
                    oldest[package] = wheel.name.split("-")[1]
        if ok:
            covered[plat.blender] = sorted(set(names))
    out = []
    for name, src in sorted(files.items()):
        shutil.copy2(src, dest / name)
        out.append(dest / name)
    shutil.rmtree(dest / ".pip", ignore_errors=True)
    return out, covered


def retag_universal2(wheel: Path, arch: str, dest: Path) -> Path:
    """A copy of the universal2 ``wheel`` tagged for one architecture (``arm64`` or ``x86_64``) in ``dest``: its
    file name, its WHEEL ``Tag:`` lines and their RECORD entry; the binaries are the same fat ones, which run on
    both. Blender 4.2.0's installer keeps a macOS wheel only if its platform tag ends with the machine's
    architecture, so it skips universal2 wheels (pyzmq publishes no others): without this, no pyzmq there."""
    parts = wheel.name[:-4].split("-")
    old_plat = parts[-1]
    major, minor = (int(v) for v in re.match(r"macosx_(\d+)_(\d+)_universal2$", old_plat).groups())
    if arch == "arm64" and (major, minor) < (11, 0):  # no arm64 macOS before 11.0
        major, minor = 11, 0
    new_plat = f"macosx_{major}_{minor}_{arch}"
    out = dest / ("-".join(parts[:-1] + [new_plat]) + ".whl")
    with zipfile.ZipFile(wheel) as src:
        names = src.namelist()
        info = next(n for n in names if n.count("/") == 1 and n.endswith(".dist-info/WHEEL"))
        record = info.rpartition("/")[0] + "/RECORD"
        meta = src.read(info).decode()
        meta = re.sub(r"^(Tag: [^-\n]+-[^-\n]+-)" + re.escape(old_plat) + r"$", r"\g<1>" + new_plat, meta, flags=re.M)
        meta_bytes = meta.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(meta_bytes).digest()).rstrip(b"=").decode()
        lines = src.read(record).decode().splitlines()
        lines = [f"{info},sha256={digest},{len(meta_bytes)}" if line.split(",")[0] == info else line for line in lines]
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                data = meta_bytes if item.filename == info else ("\n".join(lines) + "\n").encode() \
                    if item.filename == record else src.read(item)
                dst.writestr(item, data)
    return out


def _version_key(version: str) -> tuple:
    """The part of a version Blender 4.2.0 compares: the first three numbers, then the rest as text."""
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if m is None:
        return (0, 0, 0, "")
    return (*(int(g) if g is not None else 0 for g in m.groups()), version[m.end():])


def blender_4_2_0_pick(wheel_names: list[str], platform_tag: str) -> dict[str, str]:
    """package → the wheel Blender 4.2.0's installer keeps among ``wheel_names`` on ``platform_tag`` (e.g.
    ``linux_x86_64``): filtered by platform only, then per package the highest version, ties to the greatest
    file name (its wheel_manager.wheel_list_deduplicate_as_skip_set). Used to check a build."""
    picked: dict[str, str] = {}
    arch = platform_tag.partition("_")[2]
    for name in wheel_names:
        plat = name[:-4].split("-")[-1]
        if not (plat in ("any", platform_tag)
                or (platform_tag.startswith("linux_") and plat.startswith("manylinux") and plat.endswith("_" + arch))
                or (platform_tag.startswith("macosx_") and plat.startswith("macosx_")
                    and plat.endswith("_" + platform_tag.rpartition("_")[2]))):
            continue
        base = name.partition("-")[0]
        best = picked.get(base)
        if best is None or (_version_key(best.split("-")[1]), best) < (_version_key(name.split("-")[1]), name):
            picked[base] = name
    return picked


def _wheel_from_pip_output(stdout: str, target: Path, package: str, version: str | None, before: set[Path]
                           ) -> Path | None:
    """The wheel pip chose: named in its output ("Saved …" / "File was already downloaded …")."""
    normal = package.replace("-", "_").lower()
    for line in stdout.splitlines():
        match = re.search(r"(?:Saved|File was already downloaded)\s+(\S+\.whl)", line)
        if match:
            path = Path(match.group(1))
            path = path if path.is_absolute() else target / path.name
            if path.exists():
                return path
    new = [p for p in set(target.iterdir()) - before if p.name.lower().startswith(normal) and p.suffix == ".whl"]
    if len(new) == 1:
        return new[0]
    prefix = f"{normal}-{version}-" if version else f"{normal}-"
    found = sorted(p for p in target.glob("*.whl") if p.name.lower().startswith(prefix))
    return found[-1] if found else None


def _manifest(text: str, wheels: list[str], platforms: list[str] | None) -> str:
    """Rewrite the manifest's ``wheels`` (and ``platforms``) lines."""
    listed = "".join(f'\n  "./wheels/{w}",' for w in wheels)
    text, n = re.subn(r"(?m)^wheels\s*=\s*\[[^\]]*\]", f"wheels = [{listed}\n]" if wheels else "wheels = []", text)
    if n != 1:
        raise RuntimeError("blender_manifest.toml must have exactly one `wheels = [...]` line")
    if platforms is not None:
        plats = ", ".join(f'"{p}"' for p in platforms)
        text, n = re.subn(r"(?m)^platforms\s*=\s*\[[^\]]*\]", f"platforms = [{plats}]", text)
        if n != 1:
            raise RuntimeError("blender_manifest.toml must have exactly one `platforms = [...]` line")
    return text


def _add_tree(zf: zipfile.ZipFile, src: Path, prefix: str) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(_EXCLUDE.search(part) for part in rel.parts) or path.is_dir():
            continue
        zf.write(path, f"{prefix}{rel.as_posix()}")


def _write_zip(zip_path: Path, manifest: str, wheel_files: list[Path]) -> None:
    """The extension zip: ``manifest``, the add-on, protocol/ vendored, ``wheel_files`` under wheels/."""
    tmp_zip = zip_path.with_name(f".{zip_path.name}.tmp")
    with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("blender_manifest.toml", manifest)
        for path in sorted(ADDON.rglob("*")):
            rel = path.relative_to(ADDON)
            if path.is_dir() or rel.as_posix() == "blender_manifest.toml" or rel.parts[0] in ("_vendor", "wheels"):
                continue
            if any(_EXCLUDE.search(part) for part in rel.parts):
                continue
            zf.write(path, rel.as_posix())
        zf.writestr("_vendor/__init__.py", '"""Vendored copies of project packages (built by '
                    'scripts/build_extension.py)."""\n')
        _add_tree(zf, PROTOCOL, "_vendor/protocol/")
        for wheel in wheel_files:
            zf.write(wheel, f"wheels/{wheel.name}")
    os.replace(tmp_zip, zip_path)
    log.info("built %s (%d wheels, %.1f MB)", zip_path, len(wheel_files), zip_path.stat().st_size / 1e6)


def build(out_dir: str | os.PathLike, wheels: bool = True, cache_dir: str | os.PathLike | None = None,
          pinned: bool = True, split_platforms: bool = False) -> list[Path]:
    """Build ``interactive3d-<version>.zip`` in ``out_dir`` (with ``split_platforms``: one
    ``interactive3d-<version>-<platform>.zip`` per platform, holding only its wheels); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = (ADDON / "blender_manifest.toml").read_text(encoding="utf-8")
    version = re.search(r'(?m)^version\s*=\s*"([^"]+)"', manifest).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        if not wheels:
            log.warning("--no-wheels: the zip bundles no wheels; the add-on can import and export splats (but "
                        ".sog) yet cannot reach a backend unless Blender's Python already has pyzmq and msgpack")
            zip_path = out_dir / f"interactive3d-{version}.zip"
            _write_zip(zip_path, _manifest(manifest, [], None), [])
            return [zip_path]
        wheel_files, covered = download_wheels(Path(tmp) / "wheels", Path(cache_dir) if cache_dir else None,
                                               pinned=pinned)
        if not covered:
            raise RuntimeError("no platform got a wheel for every package and Python")
        if not split_platforms:
            zip_path = out_dir / f"interactive3d-{version}.zip"
            _write_zip(zip_path, _manifest(manifest, [w.name for w in wheel_files], list(covered)), wheel_files)
            return [zip_path]
        paths = []
        for plat, names in covered.items():
            zip_path = out_dir / f"interactive3d-{version}-{plat}.zip"
            _write_zip(zip_path, _manifest(manifest, names, [plat]), [w for w in wheel_files if w.name in names])
            paths.append(zip_path)
        return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder for the zip")
    parser.add_argument("--no-wheels", action="store_true", help="bundle no wheels (offline builds, tests)")
    parser.add_argument("--split-platforms", action="store_true", help="one zip per platform, with only its wheels")
    parser.add_argument("--cache-dir", help="keep downloaded wheels here between builds")
    parser.add_argument("--unpinned", action="store_true", help="latest wheels, not the installed versions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = build(args.out, wheels=not args.no_wheels, cache_dir=args.cache_dir, pinned=not args.unpinned,
                      split_platforms=args.split_platforms)
    except (RuntimeError, OSError) as exc:
        log.error("build failed: %s", exc)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
