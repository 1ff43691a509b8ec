# bench/lib.sh - helpers the rollout benchmarks share (sourced: . bench/lib.sh).

# bench_rollout_yml FILE FILL - the pipeline both rollout benchmarks trigger:
# a two-board build (a 64 KiB fw.bin per board, its bytes from the file
# FILL, e.g. /dev/zero), a release stage signing with key "bench", and a
# rollout 1 % / 10 % / 100 % with 1 h holds.  The rollout stage comes last,
# so a caller may append keys of its own (gates) to FILE.
bench_rollout_yml() {
	cat >"$1" <<EOT
name: bench
stages:
  - name: build
    matrix:
      board: [mps2-an385, mps2-an386]
    timeout: 2m
    steps:
      - name: firmware
        run: |
          mkdir -p "build/\${{ matrix.board }}"
          head -c 65536 $2 > "build/\${{ matrix.board }}/fw.bin"
    artifacts:
      - path: "build/\${{ matrix.board }}/fw.bin"
        name: "fw-\${{ matrix.board }}"
        type: application
        hardware: "\${{ matrix.board }}"
  - name: release
    kind: release
    needs: [build]
    security_counter: 1
    key: bench
  - name: fleet
    kind: rollout
    needs: [release]
    steps:
      - { percent: 1, hold: 1h }
      - { percent: 10, hold: 1h }
      - { percent: 100, hold: 1h }
EOT
}

# stat_of FILE KEY - the integer KEY of a JSON stats file (fleetsim's)
stat_of() { sed -n "s/.*\"$2\": *\([0-9]*\).*/\1/p" "$1" | head -1; }

# metric FILE PREFIX - the value of the last Prometheus sample whose line
# starts with PREFIX (0 without one), as an integer
metric() { awk -v k="$2" 'index($0, k) == 1 { v = $NF } END { printf "%.0f\n", v + 0 }' "$1"; }
