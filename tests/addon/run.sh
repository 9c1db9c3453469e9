#!/usr/bin/env bash
# The Ceph add-on (issue 11) against the running test cluster: the Debian
# package and the ansible role in ansible/.
#
#   eval "$(tests/ceph/cluster.sh env)"; tests/addon/run.sh
#
# 1. ansible-lint reports nothing; ansible-playbook --syntax-check passes;
#    the scripts pass shellcheck;
#    group_vars documents every role default with its value; the role's
#    systemd unit is the package's (paths aside), and systemd-analyze
#    accepts it.
# 2. The .deb (rbd-gateway/debian/build-deb.sh --profile dev: the debug
#    binaries the suite built, stripped; the release package is built
#    without --profile) unpacks with dpkg -x into an empty directory; its
#    rbd-gateway and rbd-row run; it has the unit, the man pages and
#    Depends on librados2 and librbd1.
# 3. The role, with the binaries of that package, run with -i localhost,
#    -c local, supervised (no systemd here), all paths under a temporary
#    root, on a pool it creates:
#    - run 0, --check on the fresh host, creates nothing;
#    - run 1 (--export-all) creates the pool (rbd pool init), the cephx
#      user with exactly mon 'profile rbd' / osd 'profile rbd pool=P', the
#      0600 keyring, and brings the gateway up as that user;
#    - run 2 (one export, created in between) restarts the gateway through
#      the handler; qemu-img writes through the export and reads back,
#      nbdinfo lists and sizes it;
#    - a cephx client without caps, and the gateway's user on a pool it
#      does not serve, are refused;
#    - run 3 reports changed=0, and so does --check;
#    - a gateway killed with SIGKILL is restarted by the supervisor;
#    - with TLS and a client CA, the health check lists over nbds:// with a
#      client certificate; plain and certificate-less clients are refused;
#    - teardown (rbd_row_state=absent) leaves no process, no file under the
#      root and no cephx user; a second teardown changes nothing.
# 4. The role again with install source deb: apt installs the package
#    (dpkg -i, with its Depends), the gateway runs /usr/bin/rbd-gateway and
#    serves the data written above; teardown removes the package too.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${CEPH_CONF:?needs the test cluster: eval \"\$(tests/ceph/cluster.sh env)\"}"

# (No `cmd | grep -q` below: grep -q stops reading at the first match and
# the writer's EPIPE fails the pipeline under pipefail.)
step() { echo "[addon] $*" >&2; }
fail() { echo "[addon] FAILED: $*" >&2; exit 1; }

need=()
for pkg in ansible ansible-lint shellcheck help2man dpkg-dev libnbd-bin qemu-utils openssl sudo; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep "ok installed" >/dev/null || need+=("$pkg")
done
if ((${#need[@]})); then
    step "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked

tmp=$(mktemp -d /tmp/rbd-row-addon.XXXXXX)
pool=addon-$$-$RANDOM
instance=addon$$
user=rbd-row-$instance
nocaps=client.addon-nocaps-$$
cleanup() {
    local rc=$?
    if [ -x "$tmp/root/libexec/rbd-gateway-supervise" ]; then
        "$tmp/root/libexec/rbd-gateway-supervise" stop "$tmp/root/etc/$instance.conf" "$tmp/root/run" /bin/false >/dev/null 2>&1 || true
    fi
    if [ -e "$tmp/deb-installed" ]; then dpkg -r rbd-row >/dev/null 2>&1 || true; fi
    ceph auth del "client.$user" >/dev/null 2>&1 || true
    ceph auth del "$nocaps" >/dev/null 2>&1 || true
    ceph osd pool rm "$pool" "$pool" --yes-i-really-really-mean-it >/dev/null 2>&1 || true
    if ((rc)) && [ -f "$tmp/root/run/$instance.log" ]; then
        echo "[addon] gateway log:" >&2
        tail -n 30 "$tmp/root/run/$instance.log" >&2
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
start=$SECONDS

# --- 1. lint, syntax, documentation ----------------------------------------
step "ansible-lint, syntax check, shellcheck"
lint_out=$(cd ansible && ansible-lint --nocolor -q 2>&1) || fail "ansible-lint: $lint_out"
# "reports nothing": no rule violation listed (only its closing summary line)
if grep -v '^Passed with\|^$' <<<"$lint_out" | grep . >/dev/null; then fail "ansible-lint reported: $lint_out"; fi
(cd ansible && ansible-playbook --syntax-check -i inventory/hosts.example.ini site.yml >/dev/null)
python3 tests/addon/check_docs.py
shellcheck -x tests/addon/run.sh rbd-gateway/debian/build-deb.sh
shellcheck -s sh ansible/roles/rbd_row/files/rbd-gateway-supervise

# --- 2. the Debian package -------------------------------------------------
step "building the .deb (debug binaries, stripped)"
deb=$(OUT="$tmp/deb" rbd-gateway/debian/build-deb.sh --profile dev 2>"$tmp/build-deb.log" | tail -n1) ||
    { cat "$tmp/build-deb.log" >&2; fail "build-deb.sh"; }
debx=$tmp/debx
mkdir "$debx"
dpkg -x "$deb" "$debx"
"$debx/usr/bin/rbd-gateway" --version | grep '^rbd-gateway [0-9]' >/dev/null || fail "rbd-gateway --version"
"$debx/usr/bin/rbd-row" --version | grep '^rbd-row [0-9]' >/dev/null || fail "rbd-row --version"
"$debx/usr/bin/rbd-gateway" --help | grep -- '--export' >/dev/null || fail "rbd-gateway --help"
"$debx/usr/bin/rbd-row" --help | grep 'export-diff' >/dev/null || fail "rbd-row --help"
for m in rbd-gateway rbd-row; do
    zcat "$debx/usr/share/man/man1/$m.1.gz" | grep '^\.TH' >/dev/null || fail "man page $m.1"
done
unit=$debx/lib/systemd/system/rbd-gateway@.service
[ -f "$unit" ] || fail "no rbd-gateway@.service in the package"
if ! grep -qx 'Restart=on-failure' "$unit" || ! grep -qx 'After=network-online.target' "$unit"; then
    fail "unit: Restart/After"
fi
depends=$(dpkg-deb -f "$deb" Depends)
if ! grep -q 'librados2' <<<"$depends" || ! grep -q 'librbd1' <<<"$depends"; then fail "Depends: $depends"; fi
if [ "${RBD_ROW_DEB_LIBRBD:-auto}" != no ] && [ -f rbd-gateway/librbd/Cargo.toml ]; then
    lib=$debx/usr/lib/rbd-row/librbd.so.1
    [ -f "$lib" ] || fail "librbd.so.1 drop-in missing from the package"
    readelf -d "$lib" | grep 'SONAME.*\[librbd\.so\.1\]' >/dev/null || fail "drop-in soname"
    # It loads (its own dependencies resolve) and answers rbd_version.
    python3 -c 'import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
v = [ctypes.c_int() for _ in range(3)]
lib.rbd_version(*map(ctypes.byref, v))
assert v[0].value >= 1, v' "$lib" || fail "the drop-in does not load"
fi
others=$(find "$debx" -name 'librbd.so*' ! -path "$debx/usr/lib/rbd-row/*")
[ -z "$others" ] || fail "the package ships librbd outside /usr/lib/rbd-row: $others"
# The role's unit, rendered with the package's paths, is the package's.
diff <(grep -v '^#' "$unit") <(grep -v '^#' ansible/roles/rbd_row/templates/rbd-gateway@.service.j2 |
    sed -e 's|{{ rbd_row_conf_dir }}|/etc/rbd-row|; s|{{ rbd_row_gateway_bin }}|/usr/bin/rbd-gateway|; s|{{ rbd_row_restart_delay }}|5|') ||
    fail "ansible/roles/rbd_row/templates/rbd-gateway@.service.j2 differs from rbd-gateway/debian/rbd-gateway@.service"
# systemd-analyze verify (no systemd needed): the unit with ExecStart at the
# unpacked binary, instantiated as rbd-gateway@i.
mkdir "$tmp/unit"
sed "s|/usr/bin/rbd-gateway|$debx/usr/bin/rbd-gateway|" "$unit" >"$tmp/unit/rbd-gateway@.service"
(cd "$tmp/unit" && systemd-analyze verify --man=no ./rbd-gateway@.service) >"$tmp/verify.log" 2>&1 ||
    { cat "$tmp/verify.log" >&2; fail "systemd-analyze verify"; }
! grep -q . "$tmp/verify.log" || { cat "$tmp/verify.log" >&2; fail "systemd-analyze verify warned"; }
step "package ok: $(basename "$deb"), $(du -k "$deb" | cut -f1) KiB"

# --- 3. the role on the test cluster ---------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
mport=$(free_port)
while [[ "$mport" == "$port" ]]; do mport=$(free_port); done
root=$tmp/root
# The binary directory exists beforehand, as /usr/local/bin does.
mkdir -p "$root/bin"
vars=$tmp/vars.json
python3 - "$vars" <<PY
import json, sys
json.dump({
    "rbd_row_hosts": "localhost",
    "rbd_row_admin_host": "localhost",
    "rbd_row_admin_ceph_conf": "$CEPH_CONF",
    "rbd_row_install_source": "binary",
    "rbd_row_binary_dir": "$debx/usr/bin",
    "rbd_row_bin_dir": "$root/bin",
    "rbd_row_conf_dir": "$root/etc",
    "rbd_row_run_dir": "$root/run",
    "rbd_row_libexec_dir": "$root/libexec",
    "rbd_row_unit_dir": "$root/systemd",
    "rbd_row_service_manager": "supervised",
    "rbd_row_instance": "$instance",
    "rbd_row_pool": "$pool",
    "rbd_row_pool_create": True,
    "rbd_row_pool_pg_num": 8,
    "rbd_row_listen": ["127.0.0.1:$port"],
    "rbd_row_metrics_listen": "127.0.0.1:$mport",
    "rbd_row_restart_delay": 1,
    "rbd_row_health_delay": 1,
}, open(sys.argv[1], "w"))
PY
export ANSIBLE_PIPELINING=1 ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_LOCALHOST_WARNING=0 \
    ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3 ANSIBLE_DEPRECATION_WARNINGS=0
# play NAME ARGS...: runs site.yml, keeps the output in $tmp/NAME.log, sets
# $changed from the recap, fails on a failed run.
play() {
    local name=$1
    shift
    local t=$SECONDS
    if ! (cd ansible && ansible-playbook -i localhost, -c local site.yml -e "@$vars" "$@") >"$tmp/$name.log" 2>&1; then
        tail -n 40 "$tmp/$name.log" >&2
        fail "ansible-playbook ($name)"
    fi
    [ -z "${ADDON_KEEP_LOGS:-}" ] || cp "$tmp/$name.log" "$ADDON_KEEP_LOGS/"
    changed=$(sed -n 's/^localhost *: .*changed=\([0-9]*\).*/\1/p' "$tmp/$name.log")
    [ -n "$changed" ] || fail "no recap in $tmp/$name.log"
    step "$name: changed=$changed ($((SECONDS - t)) s)"
}
changed_tasks() { awk '/^(TASK|RUNNING HANDLER) \[/ { t = $0 } /^changed:/ { print t }' "$tmp/$1.log" >&2; }
gateway_pid() { cat "$root/run/$instance.gateway.pid"; }
admin_rbdrow() { "$debx/usr/bin/rbd-row" -c "$CEPH_CONF" --id admin --no-progress "$@"; }
as_user() { # as_user USER KEYRING ARGS...: rbd-row as a restricted client
    local u=$1 k=$2
    shift 2
    "$debx/usr/bin/rbd-row" -c "$CEPH_CONF" --id "$u" --keyring "$k" --no-progress "$@"
}

step "run 0: --check on a fresh host changes nothing"
play check0 -e rbd_row_export_all=true --check
if ceph osd pool ls | grep -x "$pool" >/dev/null; then fail "--check created the pool"; fi
if ceph auth get "client.$user" >/dev/null 2>&1; then fail "--check created client.$user"; fi
left=$(find "$root" -mindepth 1 ! -path "$root/bin" 2>/dev/null | head)
[ -z "$left" ] || fail "--check wrote files: $left"

step "run 1: create the pool and the user, serve every image"
play apply1 -e rbd_row_export_all=true
((changed > 0)) || fail "run 1 changed nothing"
ceph osd pool application get "$pool" rbd >/dev/null || fail "pool $pool not initialised for rbd"
caps=$(ceph auth get "client.$user" -f json 2>/dev/null | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)[0]["caps"], sort_keys=True))')
[ "$caps" = "{\"mon\": \"profile rbd\", \"osd\": \"profile rbd pool=$pool\"}" ] || fail "caps of client.$user: $caps"
keyring=$root/etc/ceph.client.$user.keyring
[ "$(stat -c %a "$keyring")" = 600 ] || fail "keyring mode $(stat -c %a "$keyring")"
grep -q "^\[client.$user\]" "$keyring" || fail "keyring names no client.$user"
pid1=$(gateway_pid)
tr '\0' ' ' <"/proc/$pid1/cmdline" | grep -- "--id=$user --keyring=$keyring" >/dev/null || fail "gateway not run as client.$user"
"$root/libexec/rbd-gateway-supervise" status "$root/etc/$instance.conf" "$root/run" "$root/bin/rbd-gateway" >/dev/null ||
    fail "supervisor not running"

step "image, run 2: serve it (handler restarts the gateway)"
admin_rbdrow create --size 64M "$pool/vol"
# Caps changed by hand are put back to the least ones.
ceph auth caps "client.$user" mon 'allow r' osd 'allow rwx' 2>/dev/null
play apply2 -e '{"rbd_row_exports": ["vol"]}'
((changed > 0)) || fail "run 2 changed nothing"
caps=$(ceph auth get "client.$user" -f json 2>/dev/null | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)[0]["caps"], sort_keys=True))')
[ "$caps" = "{\"mon\": \"profile rbd\", \"osd\": \"profile rbd pool=$pool\"}" ] || fail "caps not restored: $caps"
pid2=$(gateway_pid)
[ "$pid2" != "$pid1" ] || fail "configuration changed but the gateway was not restarted"
nbdinfo --list "nbd://127.0.0.1:$port" | grep 'export="vol"' >/dev/null || fail "nbdinfo --list does not show vol"
[ "$(nbdinfo --size "nbd://127.0.0.1:$port/vol")" = $((64 << 20)) ] || fail "nbdinfo --size"
head -c $((4 << 20)) /dev/urandom >"$tmp/data.raw"
truncate -s 64M "$tmp/data.raw"
qemu-img convert -n -f raw -O raw "$tmp/data.raw" "nbd://127.0.0.1:$port/vol"
qemu-img compare -f raw -F raw "$tmp/data.raw" "nbd://127.0.0.1:$port/vol" >/dev/null || fail "qemu-img compare"
curl_ok=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$mport/metrics').status)")
[ "$curl_ok" = 200 ] || fail "metrics endpoint: $curl_ok"

step "clients without caps are refused"
ceph auth get-or-create "$nocaps" -o "$tmp/nocaps.keyring" 2>/dev/null
if out=$(as_user "${nocaps#client.}" "$tmp/nocaps.keyring" ls "$pool" 2>&1); then
    fail "a client without caps listed $pool: $out"
fi
grep -qi 'permission\|not permitted\|EPERM\|EACCES\|denied' <<<"$out" || fail "no-caps client: unexpected error: $out"
if out=$(as_user "$user" "$keyring" ls rbd 2>&1); then
    fail "client.$user listed pool rbd, which it does not serve: $out"
fi
grep -qi 'permission\|not permitted\|EPERM\|EACCES\|denied' <<<"$out" || fail "gateway user on pool rbd: unexpected error: $out"
# (librados logs that the conf's keyring path is missing before --keyring
# applies; harmless, kept out of the output)
as_user "$user" "$keyring" ls "$pool" 2>"$tmp/own-pool.err" | grep -x vol >/dev/null || fail "client.$user cannot list its own pool"

step "run 3 and --check change nothing"
play apply3 -e '{"rbd_row_exports": ["vol"]}'
((changed == 0)) || { changed_tasks apply3; fail "second run: changed=$changed"; }
play check -e '{"rbd_row_exports": ["vol"]}' --check --diff
((changed == 0)) || { changed_tasks check; fail "--check: changed=$changed"; }
[ "$(gateway_pid)" = "$pid2" ] || fail "the gateway was restarted by an unchanged run"

step "SIGKILL: the supervisor restarts the gateway"
kill -KILL "$pid2"
for _ in $(seq 100); do
    pid3=$(gateway_pid 2>/dev/null || true)
    [ -n "$pid3" ] && [ "$pid3" != "$pid2" ] && nbdinfo --list "nbd://127.0.0.1:$port" >/dev/null 2>&1 && break
    sleep 0.2
done
if [ -z "$pid3" ] || [ "$pid3" = "$pid2" ]; then fail "gateway not restarted after SIGKILL"; fi
qemu-img compare -f raw -F raw "$tmp/data.raw" "nbd://127.0.0.1:$port/vol" >/dev/null || fail "data after restart"

step "TLS with client certificates"
pki=$tmp/pki
mkdir -p "$pki/client" "$pki/anon"
leaf() { # leaf NAME EXTENSIONS: NAME-cert.pem/NAME-key.pem signed by the CA
    printf '%b' "$2" >"$pki/$1.ext"
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout "$pki/$1-key.pem" -out "$pki/$1.csr" -subj "/CN=rbd-row addon $1"
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca-cert.pem" -CAkey "$pki/ca-key.pem" \
        -CAcreateserial -out "$pki/$1-cert.pem" -days 2 -extfile "$pki/$1.ext"
}
{
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout "$pki/ca-key.pem" -out "$pki/ca-cert.pem" -days 2 -subj "/CN=rbd-row addon CA" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    leaf server 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n'
    leaf client 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
} >"$tmp/openssl.log" 2>&1 || { cat "$tmp/openssl.log" >&2; fail "openssl"; }
cp "$pki/ca-cert.pem" "$pki/client-cert.pem" "$pki/client-key.pem" "$pki/client/"
cp "$pki/ca-cert.pem" "$pki/anon/"
play tls -e "{\"rbd_row_exports\": [\"vol\"], \"rbd_row_tls_cert\": \"$pki/server-cert.pem\",
    \"rbd_row_tls_key\": \"$pki/server-key.pem\", \"rbd_row_tls_ca\": \"$pki/ca-cert.pem\",
    \"rbd_row_health_tls_certificates\": \"$pki/client\"}"
((changed > 0)) || fail "enabling TLS changed nothing"
[ "$(stat -c %a "$root/etc/tls/$instance/key.pem")" = 600 ] || fail "TLS key mode"
if nbdinfo --list "nbd://127.0.0.1:$port" >/dev/null 2>&1; then fail "TLS required, but a plain client listed the exports"; fi
if nbdinfo --size "nbds://127.0.0.1:$port/vol?tls-certificates=$pki/anon" >/dev/null 2>&1; then
    fail "a TLS client without a certificate got in"
fi
[ "$(nbdinfo --size "nbds://127.0.0.1:$port/vol?tls-certificates=$pki/client")" = $((64 << 20)) ] ||
    fail "the client certificate does not get in"

step "teardown"
play absent1 -e '{"rbd_row_exports": ["vol"]}' -e rbd_row_state=absent
((changed > 0)) || fail "teardown changed nothing"
if pgrep -f -- "$root/" >/dev/null; then fail "processes left: $(pgrep -a -f -- "$root/")"; fi
left=$(find "$root" -mindepth 1 ! -path "$root/bin" 2>/dev/null | head)
[ -z "$left" ] || fail "files left: $left"
if ceph auth get "client.$user" >/dev/null 2>&1; then fail "client.$user still exists"; fi
play absent2 -e '{"rbd_row_exports": ["vol"]}' -e rbd_row_state=absent
((changed == 0)) || { changed_tasks absent2; fail "second teardown: changed=$changed"; }
admin_rbdrow ls "$pool" | grep -x vol >/dev/null || fail "teardown touched the images"

# --- 4. the role with the package (install source deb: apt installs it) ----
step "install source deb: apply, teardown"
if dpkg-query -W -f='${Status}' rbd-row 2>/dev/null | grep "ok installed" >/dev/null; then
    fail "the package rbd-row is already installed on this machine; the test installs and removes it (dpkg -r rbd-row first)"
fi
deb_vars=(-e rbd_row_install_source=deb -e "rbd_row_deb=$deb" -e rbd_row_bin_dir=/usr/bin -e '{"rbd_row_exports": ["vol"]}')
touch "$tmp/deb-installed"
play deb1 "${deb_vars[@]}"
dpkg-query -W -f='${Status}' rbd-row | grep "ok installed" >/dev/null || fail "package not installed"
[ "$(readlink "/proc/$(gateway_pid)/exe")" = /usr/bin/rbd-gateway ] || fail "the gateway does not run the package's binary"
qemu-img compare -f raw -F raw "$tmp/data.raw" "nbd://127.0.0.1:$port/vol" >/dev/null || fail "data through the package's gateway"
play deb2 "${deb_vars[@]}" -e rbd_row_state=absent
if dpkg-query -W -f='${Status}' rbd-row 2>/dev/null | grep "ok installed" >/dev/null; then fail "package not removed"; fi
if [ -e /usr/bin/rbd-gateway ] || [ -e /var/cache/rbd-row ]; then fail "package files left"; fi
if pgrep -f -- "$root/" >/dev/null; then fail "processes left: $(pgrep -a -f -- "$root/")"; fi
left=$(find "$root" -mindepth 1 ! -path "$root/bin" 2>/dev/null | head)
[ -z "$left" ] || fail "files left: $left"
if ceph auth get "client.$user" >/dev/null 2>&1; then fail "client.$user still exists"; fi

step "ok ($((SECONDS - start)) s)"
