#!/bin/sh
# Manual build of the test kernel (vmm/build.rs runs the same rustc command).
set -e
cd "$(dirname "$0")"
out=${1:-target/testkernel.elf}
mkdir -p "$(dirname "$out")"
rustc --edition 2021 --crate-type bin --crate-name testkernel \
  -C panic=abort -C opt-level=2 -C relocation-model=static -C code-model=small \
  -C debuginfo=0 -C target-cpu=x86-64 \
  -C link-arg=-nostdlib -C link-arg=-static -C link-arg=-nostartfiles -C link-arg=-no-pie \
  -C link-arg=-Wl,-Tlinker.ld -C link-arg=-Wl,--build-id=none -C link-arg=-Wl,-n \
  -o "$out" src/main.rs
