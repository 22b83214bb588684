#!/usr/bin/env bash
# The official Azure Python SDKs (azure-identity, azure-mgmt-authorization, azure-mgmt-msi,
# azure-mgmt-databricks from PyPI, in a venv) drive the documented workflow against `sandbox`
# (.ci/sdk_workflow.py). Uses the debug binary `cargo test` built.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv target/sdk-venv
target/sdk-venv/bin/pip install --quiet azure-identity==1.27.0 azure-mgmt-authorization==4.0.0 \
  azure-mgmt-msi==7.1.0 azure-mgmt-databricks==3.0.0

dir="$(mktemp -d)"
target/debug/dbx-identity-operator sandbox --dir "$dir" > "$dir/sandbox.log" 2>&1 &
sandbox=$!
trap 'kill "$sandbox" 2>/dev/null || true; wait "$sandbox" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  [ -s "$dir/estate.json" ] && [ -s "$dir/azure.env" ] && break
  kill -0 "$sandbox" 2>/dev/null || { cat "$dir/sandbox.log"; echo "the sandbox exited"; exit 1; }
  sleep 0.1
done
[ -s "$dir/estate.json" ] || { cat "$dir/sandbox.log"; echo "the sandbox did not write its files within 10 s"; exit 1; }
target/sdk-venv/bin/python .ci/sdk_workflow.py "$dir"
