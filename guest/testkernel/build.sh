#!/bin/sh
# Manual build of the test kernel (vmm/build.rs runs the same rustc command).
set -e
cd "$(dirname "$0")"
out=${1:-target/testkernel.elf}
mkdir -p "$(dirname "$out")"
rustc --edition 2021 --crate-type bin --crate-name testkernel \
  -C panic=abort -C opt-level=2 -C relocation-model=static -C code-model=small \
  -C debuginfo=0 -C target-cpu=x86-64 -C target-feature=-sse,-sse2 \
  -C link-arg=-nostdlib -C link-arg=-static -C link-arg=-nostartfiles -C link-arg=-no-pie \
  -C link-arg=-Wl,-Tlinker.ld -C link-arg=-Wl,--build-id=none -C link-arg=-Wl,-n \
  -o "$out" src/main.rs
# No SSE may run (see src/fmtnum.rs). core's integer/padding formatters contain SSE but are
# only linked for panic messages, which the panic handler never formats; anything else that
# uses an xmm register fails the build.
if command -v objdump >/dev/null; then
  bad=$(objdump -d "$out" | awk '/^[0-9a-f]+ <.*>:$/{f=$2} /%xmm/{print f}' | sort -u |
        grep -v -e pad_integral -e Formatter3pad -e do_count_chars -e 3fmt3num3imp || true)
  if [ -n "$bad" ]; then
    echo "error: SSE instructions in $out, in: $bad" >&2
    exit 1
  fi
fi
