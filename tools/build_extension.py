"""Build the installable Blender extension zip (bpy-free; run with any Python that has pip).

    python -m tools.build_extension --out dist/

copies the add-on sources, downloads pyzmq, msgpack and zstandard wheels for Blender's Python 3.11 and 3.13
on Linux (x86_64, aarch64), Windows (x64) and macOS (arm64, x86_64) with
`pip download --only-binary=:all: --no-deps`, writes the manifest's `platforms` and
`wheels = [...]`, and zips it all as `dist/neural_studio-<version>.zip`. Wheels are fetched at
build time and never committed. numpy ships with Blender, so it is not bundled.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

log = logging.getLogger(__name__)

#: The extension's folder, zipped whole (this builder lives outside it, in tools/).
ADDON_DIR = Path(__file__).resolve().parents[1] / "addon"
MANIFEST = "blender_manifest.toml"

#: What Blender's Python needs besides numpy; pinned so a build is reproducible.
#: zstandard reads SPZ version 4 files (zstd streams).
REQUIREMENTS = ("pyzmq==27.3.0", "msgpack==1.2.4", "zstandard==0.25.0")
#: CPython versions of the Blender releases we support: 4.2 to 5.0 ship 3.11, 5.1 and later 3.13.
PYTHON_VERSIONS = ("3.11", "3.13")
#: Blender platform name -> pip platform tags (pip also accepts older manylinux/macOS tags).
PLATFORMS = {
    # pip does not widen an explicit --platform to older manylinux tags: zstandard publishes
    # manylinux_2_17 wheels only (Blender itself needs glibc 2.28, so both install).
    "linux-x64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64"),
    "linux-arm64": ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64"),
    "windows-x64": ("win_amd64",),
    "macos-arm64": ("macosx_11_0_arm64",),
    "macos-x64": ("macosx_10_15_x86_64",),
}
_EXCLUDE_DIRS = {"__pycache__"}
_EXCLUDE_SUFFIXES = {".pyc", ".pyo"}


class BuildError(Exception):
    """The extension cannot be built (pip failed, a wheel is missing, the manifest is wrong)."""


# ------------------------------------------------------------------------------------------------
# Wheels
# ------------------------------------------------------------------------------------------------

def wheel_tags(filename: str) -> tuple[str, set[str], set[str], set[str]]:
    """Split a wheel filename into (distribution, python tags, abi tags, platform tags).

    Raises:
        BuildError: The name does not follow the wheel filename convention.
    """
    name = os.path.basename(filename)
    if not name.endswith(".whl"):
        raise BuildError(f"not a wheel file name: {name!r}")
    parts = name[:-4].split("-")
    if len(parts) not in (5, 6):
        raise BuildError(f"wheel file name {name!r} does not follow name-version(-build)-python-abi-platform.whl")
    dist, py, abi, plat = parts[0], parts[-3], parts[-2], parts[-1]
    return dist.lower().replace("_", "-"), set(py.split(".")), set(abi.split(".")), set(plat.split("."))


def wheel_supports(filename: str, python: str, platform: str) -> bool:
    """True if the wheel installs on CPython `python` ("3.11") on Blender platform `platform`.

    Accepts the exact cpXY ABI, the stable ABI (`cpXY-abi3` with XY <= the Python's) and pure
    wheels; for platforms, any tag of the same OS and architecture (older manylinux/macOS
    versions and macOS `universal2` included).
    """
    _, pys, abis, plats = wheel_tags(filename)
    major, minor = python.split(".")
    cp = f"cp{major}{minor}"
    python_ok = (cp in pys and cp in abis) or ("abi3" in abis and any(
        p.startswith(f"cp{major}") and int(p[3:] or 0) <= int(minor) for p in pys)) or (
        "none" in abis and any(p in (f"py{major}", cp) for p in pys))
    if not python_ok:
        return False
    if "any" in plats:
        return True
    system, arch = platform.split("-")
    linux_arch = {"x64": "_x86_64", "arm64": "_aarch64"}[arch]
    windows = {"x64": "win_amd64", "arm64": "win_arm64"}[arch]
    mac_arch = {"x64": "_x86_64", "arm64": "_arm64"}[arch]
    for plat in plats:
        # Blender's Linux builds use glibc: manylinux only, never musllinux.
        if system == "linux" and plat.startswith("manylinux") and plat.endswith(linux_arch):
            return True
        if system == "windows" and plat == windows:
            return True
        if system == "macos" and plat.startswith("macosx_") and plat.endswith(("_universal2", mac_arch)):
            return True
    return False


def missing_wheels(wheels: Iterable[str], requirements: Sequence[str] = REQUIREMENTS,
                   pythons: Sequence[str] = PYTHON_VERSIONS, platforms: Iterable[str] = PLATFORMS) -> list[str]:
    """Every (requirement, Python, platform) that no wheel in `wheels` covers, as readable strings."""
    wheels = list(wheels)
    missing = []
    for requirement in requirements:
        dist = requirement.split("==")[0].lower()
        own = [w for w in wheels if wheel_tags(w)[0] == dist]
        for python in pythons:
            for platform in platforms:
                if not any(wheel_supports(w, python, platform) for w in own):
                    missing.append(f"{requirement} for Python {python} on {platform}")
    return missing


def download_wheels(dest: Path, requirements: Sequence[str] = REQUIREMENTS,
                    pythons: Sequence[str] = PYTHON_VERSIONS, platforms: dict = PLATFORMS,
                    python_exe: str = sys.executable) -> list[Path]:
    """`pip download` binary wheels for every Python x platform into `dest`.

    Returns:
        The wheel files in `dest`, sorted.

    Raises:
        BuildError: pip failed (its output is included) or a combination has no wheel.
    """
    dest.mkdir(parents=True, exist_ok=True)
    commands = []
    for python in pythons:
        abi = "cp" + python.replace(".", "")
        for platform, tags in platforms.items():
            command = [python_exe, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
                       "--disable-pip-version-check", "--quiet", "--dest", str(dest),
                       "--python-version", python, "--implementation", "cp", "--abi", abi]
            for tag in tags:
                command += ["--platform", tag]
            commands.append((f"Python {python} on {platform}", command + list(requirements)))

    def run(item):
        label, command = item
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"pip download failed for {label}:\n{result.stdout}{result.stderr}")
        return label

    # Downloads are network-bound: a few at a time.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for label in pool.map(run, commands):
            log.info("wheels for %s downloaded", label)
    wheels = sorted(dest.glob("*.whl"))
    missing = missing_wheels([w.name for w in wheels], requirements, pythons, platforms)
    if missing:
        raise BuildError("no wheel downloaded for: " + "; ".join(missing))
    return wheels


# ------------------------------------------------------------------------------------------------
# Manifest and zip
# ------------------------------------------------------------------------------------------------

def render_manifest(text: str, wheels: Sequence[str], platforms: Sequence[str]) -> str:
    """The manifest `text` with its top-level `platforms` and `wheels` lists replaced.

    Args:
        text: blender_manifest.toml as written in the source tree.
        wheels: Wheel paths relative to the extension root, e.g. "./wheels/x.whl".
        platforms: Blender platform names, e.g. "linux-x64".

    Raises:
        BuildError: The result is not valid TOML or lacks the lists.
    """
    for key in ("platforms", "wheels"):
        text = re.sub(rf"^{key}\s*=\s*\[[^\]]*\]\s*\n", "", text, flags=re.MULTILINE)

    def toml_list(key, values):
        return f"{key} = [\n" + "".join(f'  "{v}",\n' for v in values) + "]\n"

    block = toml_list("platforms", platforms) + toml_list("wheels", wheels) + "\n"
    table = re.search(r"^\[", text, flags=re.MULTILINE)  # top-level keys must precede tables
    at = table.start() if table else len(text)
    text = text[:at] + block + text[at:]
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{MANIFEST}: the rendered manifest is not valid TOML: {exc}") from exc
    if parsed.get("wheels") != list(wheels) or parsed.get("platforms") != list(platforms):
        raise BuildError(f"{MANIFEST}: wheels/platforms did not end up as top-level keys")
    return text


def source_files(src: Path = ADDON_DIR) -> list[Path]:
    """The add-on files that go into the extension, relative to `src`, sorted."""
    files = []
    for root, dirs, names in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in _EXCLUDE_DIRS and not d.startswith("."))
        for name in sorted(names):
            path = Path(root, name)
            if path.suffix in _EXCLUDE_SUFFIXES or name.startswith("."):
                continue
            files.append(path.relative_to(src))
    return files


def build(out_dir: Path, src: Path = ADDON_DIR, wheels_dir: Path | None = None) -> Path:
    """Build the extension zip.

    Args:
        out_dir: Where the zip is written (created if needed).
        src: The add-on source folder (holding blender_manifest.toml).
        wheels_dir: Use the wheels already in this folder instead of downloading (they are still
            checked to cover every Python and platform).

    Returns:
        Path of the zip: <out_dir>/<id>-<version>.zip.

    Raises:
        BuildError: Manifest missing/invalid, pip failed, or wheels missing.
    """
    manifest_path = src / MANIFEST
    if not manifest_path.is_file():
        raise BuildError(f"{manifest_path} not found")
    manifest_text = manifest_path.read_text(encoding="utf-8")
    try:
        manifest = tomllib.loads(manifest_text)
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{manifest_path}: invalid TOML: {exc}") from exc
    for key in ("id", "version", "schema_version", "type", "blender_version_min"):
        if not manifest.get(key):
            raise BuildError(f"{manifest_path}: field {key!r} is missing")

    with tempfile.TemporaryDirectory(prefix="nstudio-build-") as tmp:
        if wheels_dir is None:
            wheels = download_wheels(Path(tmp) / "wheels")
        else:
            wheels = sorted(Path(wheels_dir).glob("*.whl"))
            missing = missing_wheels([w.name for w in wheels])
            if missing:
                raise BuildError(f"{wheels_dir} lacks wheels for: " + "; ".join(missing))
        wheel_entries = [f"./wheels/{w.name}" for w in wheels]
        rendered = render_manifest(manifest_text, wheel_entries, list(PLATFORMS))

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        zip_path = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
        partial = zip_path.with_suffix(".zip.part")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for rel in source_files(src):
                if rel.as_posix() == MANIFEST:
                    archive.writestr(MANIFEST, rendered)
                else:
                    archive.write(src / rel, rel.as_posix())
            for wheel in wheels:
                # Wheels are already compressed.
                archive.write(wheel, f"wheels/{wheel.name}", compress_type=zipfile.ZIP_STORED)
        os.replace(partial, zip_path)
    log.info("built %s (%d wheels)", zip_path, len(wheels))
    return zip_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.build_extension", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default: dist/)")
    parser.add_argument("--wheels", type=Path, default=None,
                        help="use the wheels in this folder instead of downloading them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build(args.out, wheels_dir=args.wheels)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
