#!/usr/bin/env bash
# The image ships the operator only: builds the binary with the Dockerfile's own `cargo build`
# flags (debug profile, to skip the LTO build; features are what matter) and checks that neither
# the emulators nor the CEL interpreter are in it.
set -euo pipefail
cd "$(dirname "$0")/.."

build=$(grep -E '^RUN cargo build ' Dockerfile | head -n 1 | sed -e 's/^RUN //' -e 's/ --release//')
[ -n "$build" ] || { echo "image check: no 'RUN cargo build' line in Dockerfile" >&2; exit 1; }
features=$(sed -E -e 's/^cargo build//' -e 's/--(locked|bin [^ ]+)//g' <<<"$build")
echo "image build: $build"

tree=$(cargo tree --locked $features -e normal --prefix none)
if grep -Eiq '^(cel|kube-cel|antlr4rust|k8s-pb|rcgen|axum-server) ' <<<"$tree"; then
    echo "image check FAILED: the image's dependency tree has emulator-only crates:" >&2
    grep -Ei '^(cel|kube-cel|antlr4rust|k8s-pb|rcgen|axum-server) ' <<<"$tree" | sort -u >&2
    exit 1
fi

# The build doubles as the lint of this configuration: code that only the sandbox used shows up
# as warnings here (cargo replays them on a cached build too).
output=$($build 2>&1) || { echo "$output" >&2; echo "image check FAILED: the image's build failed" >&2; exit 1; }
if grep -q '^warning' <<<"$output"; then
    echo "$output" >&2
    echo "image check FAILED: the image's build has warnings" >&2
    exit 1
fi
binary=target/debug/dbx-identity-operator
help=$("$binary" --help)
for command in sandbox demo; do
    if grep -Eq "^  $command " <<<"$help"; then
        echo "image check FAILED: the image's binary has a '$command' subcommand" >&2
        exit 1
    fi
done
# A removed command is refused by clap (exit 2), not run.
if "$binary" sandbox >/dev/null 2>&1; then
    echo "image check FAILED: 'sandbox' ran on the image's binary" >&2
    exit 1
fi
# The shipped binary prints the CRDs the chart installs.
if ! diff -q <("$binary" crd) <(cat crds/*.yaml) >/dev/null; then
    echo "image check FAILED: the image's binary prints other CRDs than crds/" >&2
    exit 1
fi
echo "image check: no cel/antlr/emulator crates; CRDs as in crds/; commands: $(sed -n '/^Commands:/,/^$/p' <<<"$help" | awk 'NR>1 && NF {print $1}' | tr '\n' ' ')"
