# Prepares a bare GPU host for tests and benchmarks; source it from the repository root:
#     source scripts/gpu_host_setup.sh
# Installs the offline wheels of .whl/ (optuna, sqlalchemy, FLA for comparisons) into /tmp/site,
# this checkout in editable mode, and unpacks a saved Triton cache (.gpu_cache/tc.tgz) if present.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v -e WARNING -e notice
if [ -f .gpu_cache/tc.tgz ]; then tar xzf .gpu_cache/tc.tgz -C /tmp; fi
export TRITON_CACHE_DIR=/tmp/tc PYTHONUNBUFFERED=1
