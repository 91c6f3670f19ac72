"""Build the wheel folder a GPU acceptance run installs offline: what the backend needs beyond a stock CUDA
PyTorch image (Python 3.12, torch 2.11+cu130, Triton 3.6, numpy 2, transformers, huggingface_hub,
safetensors, scipy, scikit-image, pillow, msgpack, pytest, hypothesis: /work/shared/GPU-IMAGE.md).

    python scripts/gpu_kit.py --out kit [--python-tag cp312] [--prebuilt DIR] [--max-mib 60]

The kit holds: this project's own wheel (built from the checkout, no dependencies); the packages the image
lacks, each pinned to a version measured to work there (KIT below; binary wheels for the given CPython tag,
manylinux x86_64, fetched with ``pip download --no-deps``); and gsplat and nerfacc. PyPI has those two only as
pure-Python wheels that JIT-compile their CUDA code on first use (13-15 min each on 2 cores), so
``--prebuilt DIR`` takes binary wheels of them from DIR instead: /work/shared/gpu-kit holds gsplat 1.5.3 and
nerfacc 0.5.3 built on a CPU machine (no GPU needed) with ``pip wheel --no-build-isolation`` against torch
2.11.0+cu130's headers, nvcc 13.0, TORCH_CUDA_ARCH_LIST=9.0 and BUILD_NO_CUDA unset, Python 3.12. Without
``--prebuilt`` the PyPI wheels go in and the manifest says they will JIT-compile.

Writes MANIFEST.json and MANIFEST.md (name, version, file, MiB, sha256, where from). Exit 1 when the kit is
over ``--max-mib`` (a device lease carries about 60 MiB).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# distribution -> version: what the backend (and its tests) import that the image does not have, with the
# dependencies of those that the image does not have either
KIT = {
    "diffusers": "0.42.1",
    "pyzmq": "27.3.0",
    "trimesh": "5.2.0",
    "xatlas": "0.0.11",
    "zstandard": "0.25.0",
    "plyfile": "1.1.5",
    "importlib-metadata": "10.2.0",  # diffusers
    "zipp": "4.1.2",  # importlib-metadata
    "requests": "2.34.2",  # diffusers
    "charset-normalizer": "3.5.3",  # requests
    "urllib3": "2.8.0",  # requests
    "jaxtyping": "0.3.11",  # gsplat
    "wadler-lindig": "0.1.8",  # jaxtyping
    "ninja": "1.13.2",  # gsplat/nerfacc's JIT fallback
    "lazy-importer": "0.1.0",  # in the measured kit of GPU-IMAGE.md beside the above
}
PREBUILT = {"gsplat": "1.5.3", "nerfacc": "0.5.3"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _wheel_name(path: Path) -> tuple[str, str]:
    dist, version = path.name.split("-")[:2]
    return _norm(dist), version


def _pip_download(specs: list[str], dest: Path, py_tag: str) -> None:
    ver = py_tag[2] + "." + py_tag[3:]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
           "--python-version", ver, "--implementation", "cp", "--abi", py_tag, "--abi", "abi3", "--abi", "none",
           "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
           "--platform", "manylinux1_x86_64", "--platform", "any", "--dest", str(dest), *specs]
    subprocess.run(cmd, check=True)


def build(out: Path, py_tag: str, prebuilt: Path | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    sources: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dl = Path(tmp)
        _pip_download([f"{d}=={v}" for d, v in KIT.items()], dl, py_tag)
        for w in dl.glob("*.whl"):
            sources[w.name] = "PyPI (pip download --no-deps --only-binary=:all:)"
        for dist, version in PREBUILT.items():
            found = sorted(prebuilt.glob(f"{dist}-{version}-{py_tag}-*.whl")) if prebuilt else []
            if found:
                shutil.copy(found[-1], dl / found[-1].name)
                sources[found[-1].name] = f"prebuilt binary wheel from {prebuilt} (no JIT compile)"
            else:
                before = set(dl.glob("*.whl"))
                _pip_download([f"{dist}=={version}"], dl, py_tag)
                for w in set(dl.glob("*.whl")) - before:
                    sources[w.name] = "PyPI pure-Python wheel: JIT-compiles its CUDA code on first use (minutes)"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps", "--no-build-isolation",
                        "--wheel-dir", str(dl), str(ROOT)], check=True)
        for w in dl.glob("interactive3d-*.whl"):
            sources[w.name] = f"this checkout ({ROOT})"
        for old in out.glob("*.whl"):
            old.unlink()
        for w in dl.glob("*.whl"):
            shutil.copy(w, out / w.name)
    rows = []
    for w in sorted(out.glob("*.whl")):
        dist, version = _wheel_name(w)
        data = w.read_bytes()
        rows.append({"name": dist, "version": version, "file": w.name, "mib": round(len(data) / 2**20, 2),
                     "sha256": hashlib.sha256(data).hexdigest(), "source": sources.get(w.name, "?")})
    total = round(sum(r["mib"] for r in rows), 2)
    return {"python_tag": py_tag, "total_mib": total, "wheels": rows,
            "image_brings": "torch, triton, numpy, transformers, huggingface_hub, safetensors, scipy, scikit-image, pillow, msgpack, pytest, hypothesis",
            "install": "pip install --no-index --no-deps --target SITE DIR/*.whl; PYTHONPATH=SITE"}


def write_manifest(out: Path, m: dict) -> None:
    (out / "MANIFEST.json").write_text(json.dumps(m, indent=1) + "\n")
    lines = [f"# GPU acceptance wheel kit ({m['python_tag']}, {m['total_mib']} MiB)", "",
             f"Installed with `{m['install']}`. The image brings: {m['image_brings']}.", "",
             "| wheel | version | MiB | from |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['version']} | {r['mib']} | {r['source']} |" for r in m["wheels"]]
    (out / "MANIFEST.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="the wheel folder to (re)fill")
    ap.add_argument("--python-tag", default="cp312", help="the image's CPython tag (default cp312)")
    ap.add_argument("--prebuilt", type=Path, default=None, help="a folder with prebuilt gsplat/nerfacc wheels for the image's torch")
    ap.add_argument("--max-mib", type=float, default=60.0)
    a = ap.parse_args()
    if not re.fullmatch(r"cp3\d+", a.python_tag):
        ap.error(f"--python-tag must look like cp312, got {a.python_tag!r}")
    m = build(a.out, a.python_tag, a.prebuilt)
    write_manifest(a.out, m)
    print(f"gpu_kit: {len(m['wheels'])} wheels, {m['total_mib']} MiB in {a.out} (MANIFEST.md says what each is)")
    if m["total_mib"] > a.max_mib:
        print(f"gpu_kit: over the {a.max_mib} MiB limit", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
