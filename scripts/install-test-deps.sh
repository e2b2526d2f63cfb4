#!/usr/bin/env bash
# Installs every third-party component the tests run against (idempotent):
#   Debian: prometheus (promtool), nginx + echo module, wrk, openssl, systemd-analyze,
#           g++ (libFuzzer), jq (bench.sh), python3-venv
#   PyPI (venv in .test-env/venv, pinned): rotel, loxwebsocket, opentelemetry-proto,
#           protobuf, grpcio; pyloxone-api in .test-env/venv-pyloxone (its pins clash)
# Prints the environment file path tests read: .test-env/env
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
envdir="$root/.test-env"
mkdir -p "$envdir"

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ] || need_apt+=(libnginx-mod-http-echo)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)          # libFuzzer (scripts/fuzz.sh)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)            # scripts/bench.sh
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "error: installing ${need_apt[*]} needs root: run as root or install sudo" >&2
      exit 1
    }
    as_root=(sudo)
  fi
  command -v apt-get >/dev/null 2>&1 || {
    echo "error: apt-get not found: this script installs Debian/Ubuntu packages (${need_apt[*]})" >&2
    exit 1
  }
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

venv="$envdir/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Pinned: the tests read rotel's debug output line by line, so a new release could break
# them without a change here. Bump deliberately, and run scripts/test.sh after.
pkgs=(rotel==0.0.1a15 loxwebsocket==0.6.0 opentelemetry-proto==1.45.2 protobuf==7.36.2
  grpcio==1.85.1)
# Their own dependencies (aiohttp, pycryptodome, ...) are pinned by the constraints file.
constraints="$(dirname "$0")/test-constraints.txt"
wanted="${pkgs[*]} $(sha256sum "$constraints" | cut -d' ' -f1)"
pins="$venv/.pinned"
if [ "$(cat "$pins" 2>/dev/null)" != "$wanted" ] ||
  ! "$venv/bin/python" -c 'import rotel, loxwebsocket, opentelemetry.proto, google.protobuf, grpc' 2>/dev/null; then
  echo "installing PyPI packages: ${pkgs[*]} (constraints: $constraints)"
  "$venv/bin/pip" install -q -c "$constraints" "${pkgs[@]}"
  echo "$wanted" >"$pins"
fi
rotel=$("$venv/bin/python" -c 'import rotel,os;print(os.path.join(os.path.dirname(rotel.__file__),"rotel-agent"))')

# pyloxone-api (a second third-party Loxone client for the simulator tests) gets a venv of its
# own: it pins pycryptodome<4, which loxwebsocket's venv has at 4.x, and websockets<10,
# whose 9.x cannot run on Python 3.10+ (it passes `loop=` to asyncio.Lock). So the whole set
# is pinned here and installed without dependency resolution, with websockets 10.4, whose
# legacy client API the library uses unchanged.
pyl_venv="$envdir/venv-pyloxone"
pyl_pkgs=(pyloxone-api==0.2.4 websockets==10.4 httpx==0.19.0 httpcore==0.13.7 h11==0.12.0
  anyio==3.7.1 sniffio==1.3.1 rfc3986==1.5.0 idna==3.20 certifi==2026.10.18
  charset-normalizer==3.5.2 pycryptodome==3.24.1)
if [ ! -x "$pyl_venv/bin/python" ]; then
  python3 -m venv "$pyl_venv"
fi
if [ "$(cat "$pyl_venv/.pinned" 2>/dev/null)" != "${pyl_pkgs[*]}" ] ||
  ! "$pyl_venv/bin/python" -c 'import pyloxone_api, websockets, httpx, Crypto' 2>/dev/null; then
  echo "installing PyPI packages (venv-pyloxone, no dependency resolution): ${pyl_pkgs[*]}"
  "$pyl_venv/bin/pip" install -q --no-deps "${pyl_pkgs[@]}"
  echo "${pyl_pkgs[*]}" >"$pyl_venv/.pinned"
fi

cat > "$envdir/env" <<ENV
export LOXEXP_PROMTOOL=$(command -v promtool)
export LOXEXP_PROMETHEUS=$(command -v prometheus)
export LOXEXP_NGINX=$(command -v nginx)
export LOXEXP_NGINX_ECHO_MODULE=/usr/lib/nginx/modules/ngx_http_echo_module.so
export LOXEXP_WRK=$(command -v wrk)
export LOXEXP_OPENSSL=$(command -v openssl)
export LOXEXP_PYTHON=$venv/bin/python
export LOXEXP_ROTEL=$rotel
export LOXEXP_PYLOXONE_PYTHON=$pyl_venv/bin/python
ENV
echo "$envdir/env"
