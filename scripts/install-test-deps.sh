#!/usr/bin/env bash
# Installs every third-party component the tests run against (idempotent):
#   Debian: prometheus (promtool), nginx + echo module, wrk, openssl, valgrind
#   PyPI (venv in .test-env/venv): rotel, loxwebsocket, opentelemetry-proto, protobuf, grpcio
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
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

venv="$envdir/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
pkgs=(rotel loxwebsocket opentelemetry-proto protobuf grpcio)
if ! "$venv/bin/python" -c 'import rotel, loxwebsocket, opentelemetry.proto, google.protobuf, grpc' 2>/dev/null; then
  echo "installing PyPI packages: ${pkgs[*]}"
  "$venv/bin/pip" install -q --pre "${pkgs[@]}"
fi
rotel=$("$venv/bin/python" -c 'import rotel,os;print(os.path.join(os.path.dirname(rotel.__file__),"rotel-agent"))')

cat > "$envdir/env" <<ENV
export LOXEXP_PROMTOOL=$(command -v promtool)
export LOXEXP_PROMETHEUS=$(command -v prometheus)
export LOXEXP_NGINX=$(command -v nginx)
export LOXEXP_NGINX_ECHO_MODULE=/usr/lib/nginx/modules/ngx_http_echo_module.so
export LOXEXP_WRK=$(command -v wrk)
export LOXEXP_OPENSSL=$(command -v openssl)
export LOXEXP_PYTHON=$venv/bin/python
export LOXEXP_ROTEL=$rotel
ENV
echo "$envdir/env"
