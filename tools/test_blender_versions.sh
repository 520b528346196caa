#!/usr/bin/env bash
# Run the Blender-side suites on other Blender versions, each in a side venv with that bpy wheel.
#
#   tools/test_blender_versions.sh            # bpy 4.2 and 4.4 (the main venv has 5.0.1)
#   tools/test_blender_versions.sh 4.2        # one version
#   VENVS=/data/venvs SUITES="tests/motion_blender" tools/test_blender_versions.sh 4.4
#
# Each venv gets the project with its server extra (the suites start a real `nstudio serve` from
# the same interpreter) and `bpy==X.*` instead of the dev extra's bpy 5.0.1, under the project's
# constraints (numpy<2, torch 2.13.0 CPU). Needs python3.11 (the bpy 4.x and 5.0 wheels are
# cp311). Not run by CI; docs/addon.md ("Blender versions") lists what passed where.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENVS="${VENVS:-/tmp/nstudio-bpy}"
VERSIONS=("${@:-4.2 4.4}")
read -r -a VERSIONS <<< "${VERSIONS[*]}"
SUITES="${SUITES:-tests/motion tests/motion_blender tests/blender/test_generate_blender.py \
tests/blender/test_generate_sources_blender.py tests/blender/test_generate_targets_blender.py \
tests/blender/test_texture_blender.py}"

status=0
for version in "${VERSIONS[@]}"; do
    venv="$VENVS/bpy-$version"
    if [ ! -x "$venv/bin/python" ]; then
        python3.11 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q -c "$REPO/constraints.txt" -e "$REPO[server]" "bpy==$version.*" \
        pytest pytest-timeout hypothesis
    echo "== bpy $("$venv/bin/python" -c 'import bpy; print(bpy.app.version_string)')"
    # Scratch folders out of $HOME (tests/conftest.py makes its own per run as well); the
    # checkout first on the path, so the server subprocess runs this tree's code.
    scratch="$(mktemp -d)"
    # shellcheck disable=SC2086  # SUITES is a list of paths
    if ! (cd "$REPO" && PYTHONPATH="$REPO" BLENDER_USER_RESOURCES="$scratch/bur" \
          XDG_CACHE_HOME="$scratch/xdg" HF_HOME="$scratch/hf" TORCH_EXTENSIONS_DIR="$scratch/te" \
          "$venv/bin/python" -m pytest -q -p no:cacheprovider $SUITES); then
        status=1
        echo "== bpy $version: FAILED"
    fi
    rm -rf "$scratch"
done
exit $status
