#!/usr/bin/env bash
# Install this project and its pinned dependencies (requirements.txt beside this script) into
# the Python that `python` finds: the install step of cluster/image/Dockerfile, and what
# tests/integration/test_image_install.py runs in a fresh virtual environment.
#
#   cluster/image/install.sh TORCH [PROJECT_DIR]
#
# TORCH says where torch comes from:
#   pypi         the configured index (PyPI: on Linux x86_64 the CUDA build, with its CUDA
#                libraries as nvidia-* wheels; the GPU image)
#   cpu          PyTorch's CPU index, https://download.pytorch.org/whl/cpu (the CPU image)
#   https://...  any other package index (e.g. https://download.pytorch.org/whl/cu128)
# PROJECT_DIR is the checkout to install (default: the one holding this script). It is
# installed as a package (not editable) with --no-deps: its dependencies are the pins.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
torch_source=${1:?usage: install.sh pypi|cpu|INDEX_URL [PROJECT_DIR]}
project=${2:-$(cd "$here/../.." && pwd)}
requirements="$here/requirements.txt"
torch_pin=$(grep -E '^torch==' "$requirements")

case "$torch_source" in
  pypi) index=() ;;
  cpu) index=(--index-url https://download.pytorch.org/whl/cpu) ;;
  http://* | https://*) index=(--index-url "$torch_source") ;;
  *)
    echo "install.sh: unknown torch source '$torch_source': give pypi, cpu or an index URL" >&2
    exit 2
    ;;
esac

python -m pip install ${index[@]+"${index[@]}"} "$torch_pin"
python -m pip install -r "$requirements"
python -m pip install --no-deps "$project"

# The image is usable: the library, the jobs and their pinned stack import, and every job
# answers --help from the installed console commands.
python - <<'PY'
import importlib.metadata as md

import jobs.train  # noqa: F401  the jobs' imports (ray.train, mlflow, boto3, pyarrow)
import torch
import unet_core

print(
    f"unet-ray {md.version('unet-ray')}: torch {torch.__version__} (CUDA build "
    f"{torch.version.cuda}), ray {md.version('ray')}, mlflow {md.version('mlflow')}, "
    f"unet_core at {unet_core.__file__}"
)
PY
scripts=$(python -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
commands=$(python -c 'import importlib.metadata as md
print(" ".join(e.name for e in md.distribution("unet-ray").entry_points
               if e.group == "console_scripts"))')
for command in $commands; do
  "$scripts/$command" --help >/dev/null
  echo "$command --help: ok"
done
echo "install.sh: done"
