#!/usr/bin/env bash
# Throwaway single-node Ceph (Pacific) cluster on loopback, for the RADOS
# backend tests of rbd-row.
#
#   tests/ceph/cluster.sh start    # install packages if missing, start mon+mgr+osd(s), pool "rbd"
#   tests/ceph/cluster.sh env      # prints export lines: eval "$(tests/ceph/cluster.sh env)"
#   tests/ceph/cluster.sh status   # ceph -s
#   tests/ceph/cluster.sh wait     # waits until HEALTH_OK, every OSD up+in, every PG active+clean
#   tests/ceph/cluster.sh osd-stop ID   # stops osd.ID (SIGTERM, pid file), waits until it is down
#   tests/ceph/cluster.sh osd-start ID  # starts osd.ID again, waits until it is up (not for recovery)
#   tests/ceph/cluster.sh stop     # kills the daemons it started (pid files), removes the dir
#
# RBD_ROW_CEPH_OSDS=N (default 1, at most 9) starts N bluestore OSDs, each on
# its own sparse block file (8 GiB for one OSD, 4 GiB each otherwise, with
# osd_memory_target 512 MiB), all on this host (crush chooseleaf type 0).
# RBD_ROW_CEPH_OSD_GIB=G (1 to 4096) makes each block file G GiB instead.
# The file is sparse, but bluestore does not give freed space back to it,
# so over a long run it grows towards G GiB: keep that much free on the
# file system of $RBD_ROW_CEPH_DIR (a full one kills the OSD with ENOSPC,
# and clients then hang). The benchmark report's full run wants 24 (native
# clones and the snapshot-trim backlog of its rolling step outgrow 8 GiB).
# It is fixed at `start` (ceph.conf's bluestore block size); a later `start`
# of a running cluster with another value only warns.
# With N >= 3 the pool "rbd" has size 3 / min_size 2 (for failure tests:
# one OSD down keeps it writable, two down block it); otherwise size 1.
# The count is recorded in the directory: `env` prints it, and the other
# subcommands use the recorded one.
#
# Everything (config, keyrings, mon/mgr/osd data, logs, pid files, admin
# sockets, the sparse bluestore block files) lives in one directory:
# $RBD_ROW_CEPH_DIR, default /tmp/rbd-row-ceph. cephx is on; two client
# identities exist: client.admin (everything) and client.rbdrow
# (mon 'profile rbd', osd 'profile rbd pool=rbd'), each with its keyring in
# that directory, found through the generated ceph.conf.
#
# `start` is idempotent: if the daemons of a previous start are alive it only
# waits for health and prints "ok". It fails (nonzero, with the tail of the
# logs) if the cluster is not HEALTH_OK with all its OSDs up and in and every
# PG active+clean within $RBD_ROW_CEPH_TIMEOUT seconds (default 90); the
# daemons are then left running for inspection (`stop` removes them).

set -euo pipefail

DIR="${RBD_ROW_CEPH_DIR:-/tmp/rbd-row-ceph}"
TIMEOUT="${RBD_ROW_CEPH_TIMEOUT:-90}"
CONF="$DIR/ceph.conf"
MARKER="$DIR/.rbd-row-ceph-cluster"
OSDS_FILE="$DIR/osds"
PKGS=(ceph-mon ceph-osd ceph-mgr ceph-common librados-dev librbd-dev)

if [[ -n "${RBD_ROW_CEPH_OSDS:-}" && ! "$RBD_ROW_CEPH_OSDS" =~ ^[1-9]$ ]]; then
    echo "RBD_ROW_CEPH_OSDS must be a number from 1 to 9, not '$RBD_ROW_CEPH_OSDS'" >&2
    exit 2
fi
if [[ -n "${RBD_ROW_CEPH_OSD_GIB:-}" ]] &&
    { [[ ! "$RBD_ROW_CEPH_OSD_GIB" =~ ^[1-9][0-9]{0,3}$ ]] || ((RBD_ROW_CEPH_OSD_GIB > 4096)); }; then
    echo "RBD_ROW_CEPH_OSD_GIB must be a number of GiB from 1 to 4096, not '$RBD_ROW_CEPH_OSD_GIB'" >&2
    exit 2
fi

# The OSD count of the cluster in $DIR, if there is one.
recorded_osds() {
    local n
    [[ -s "$OSDS_FILE" ]] || return 1
    n=$(<"$OSDS_FILE")
    [[ "$n" =~ ^[1-9]$ ]] || return 1
    echo "$n"
}

set_osds() {
    local i
    OSDS=$1
    DAEMONS=(mon.a mgr.x)
    for ((i = 0; i < OSDS; i++)); do
        DAEMONS+=("osd.$i")
    done
}

set_osds "$(recorded_osds || echo "${RBD_ROW_CEPH_OSDS:-1}")"

log() { printf '[cluster.sh] %s\n' "$*" >&2; }

die() {
    log "ERROR: $*"
    if [[ -d "$DIR/log" ]]; then
        for f in "$DIR"/log/*.log; do
            [[ -s "$f" ]] || continue
            printf '\n===== tail of %s =====\n' "$f" >&2
            tail -n 25 "$f" >&2 || true
        done
    fi
    if [[ -f "$CONF" ]]; then
        printf '\n===== ceph -s =====\n' >&2
        timeout 10 ceph -c "$CONF" -s >&2 2>&1 || true
    fi
    exit 1
}

# Refuse to operate on a path that could not be our throwaway directory.
check_dir() {
    case "$DIR" in
        "" | "/" | /bin* | /boot* | /dev* | /etc* | /home | /lib* | /proc* | /root | /sbin* | /sys* | /usr* | /var | /work | /work/main)
            echo "refusing to use RBD_ROW_CEPH_DIR=$DIR" >&2
            exit 2
            ;;
    esac
}

ensure_packages() {
    local missing=()
    local p
    for p in "${PKGS[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$p")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    log "installing missing packages: ${missing[*]}"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 ||
        die "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed"
}

ceph_() { timeout 20 ceph -c "$CONF" "$@"; }

pid_of() {
    local f="$DIR/run/$1.pid"
    [[ -s "$f" ]] || return 1
    local pid
    pid=$(<"$f")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    # Only a ceph daemon started with our config counts as ours.
    if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$CONF"; then
        echo "$pid"
        return 0
    fi
    return 1
}

all_running() {
    local d
    [[ -f "$MARKER" && -f "$CONF" ]] || return 1
    for d in "${DAEMONS[@]}"; do
        pid_of "$d" >/dev/null || return 1
    done
}

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

kill_daemons() {
    local d pid pids=()
    for d in "${DAEMONS[@]}"; do
        if pid=$(pid_of "$d"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    local i
    for ((i = 0; i < 50; i++)); do
        local alive=0
        for pid in "${pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        ((alive)) || return 0
        sleep 0.2
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
}

wait_healthy() {
    local deadline=$((SECONDS + TIMEOUT))
    local health="" up="" in="" pgs="" osdmap pgstat d
    while ((SECONDS < deadline)); do
        for d in "${DAEMONS[@]}"; do
            pid_of "$d" >/dev/null || die "daemon $d exited"
        done
        health=$(ceph_ health 2>/dev/null || true)
        # HEALTH_OK alone does not mean the OSD is up or that the PGs have
        # peered: compare the mgr's PG states with the pools' pg_num.
        osdmap=$(ceph_ osd dump -f json 2>/dev/null || echo '{}')
        pgstat=$(ceph_ pg stat -f json 2>/dev/null || echo '{}')
        read -r up in pgs < <(OSDMAP="$osdmap" PGSTAT="$pgstat" python3 -c '
import json, os
try:
    m = json.loads(os.environ["OSDMAP"])
    s = json.loads(os.environ["PGSTAT"]).get("pg_summary", {})
except ValueError:
    print("? ? ?")
    raise SystemExit
up = sum(1 for o in m.get("osds", []) if o.get("up") == 1)
inn = sum(1 for o in m.get("osds", []) if o.get("in") == 1)
want = sum(p.get("pg_num", 0) for p in m.get("pools", []))
clean = sum(x["num"] for x in s.get("num_pg_by_state", []) if x["name"] == "active+clean")
print(up, inn, "clean" if want > 0 and clean == want else "%d/%d" % (clean, want))' 2>/dev/null || echo "? ? ?")
        if [[ "$up" == "$OSDS" && "$in" == "$OSDS" && "$health" == HEALTH_OK* && "$pgs" == clean ]]; then
            return 0
        fi
        sleep 1
    done
    die "cluster not healthy after ${TIMEOUT}s (osds up: ${up:-?}/$OSDS, in: ${in:-?}/$OSDS, pgs active+clean: ${pgs:-?}, health: ${health:-?})"
}

# Prints 1 if osd.$1 is up in the current osdmap, 0 if not, ? if unknown.
osd_up() {
    local osdmap
    osdmap=$(ceph_ osd dump -f json 2>/dev/null || echo '{}')
    OSDMAP="$osdmap" python3 -c '
import json, os, sys
try:
    m = json.loads(os.environ["OSDMAP"])
except ValueError:
    print("?")
    raise SystemExit
for o in m.get("osds", []):
    if o.get("osd") == int(sys.argv[1]):
        print(o.get("up", "?"))
        raise SystemExit
print("?")' "$1" 2>/dev/null || echo "?"
}

# Waits until osd.$1 is marked up ($2 = 1) or down ($2 = 0) in the osdmap.
wait_osd_state() {
    local id=$1 want=$2 state=""
    local deadline=$((SECONDS + TIMEOUT))
    while ((SECONDS < deadline)); do
        state=$(osd_up "$id")
        [[ "$state" == "$want" ]] && return 0
        sleep 0.5
    done
    die "osd.$id not marked $( ((want)) && echo up || echo down) after ${TIMEOUT}s (up: $state)"
}

check_osd_id() {
    if [[ ! "${1:-}" =~ ^[0-9]$ ]] || (($1 >= OSDS)); then
        echo "usage: $0 osd-stop|osd-start ID, with ID from 0 to $((OSDS - 1)) (the cluster in $DIR has $OSDS OSDs)" >&2
        exit 2
    fi
    [[ -f "$MARKER" && -f "$CONF" ]] || { echo "no cluster in $DIR (run: $0 start)" >&2; exit 1; }
}

osd_stop() {
    check_dir
    check_osd_id "${1:-}"
    local id=$1 pid i
    if ! pid=$(pid_of "osd.$id"); then
        log "osd.$id is not running"
    else
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "osd.$id (pid $pid) ignored SIGTERM for 10s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # A SIGTERMed OSD tells the monitor; a killed one is reported by its
    # peers (mon osd min down reporters = 1).
    wait_osd_state "$id" 0
    echo "ok: osd.$id stopped (down)"
}

osd_start() {
    check_dir
    check_osd_id "${1:-}"
    local id=$1
    if pid_of "osd.$id" >/dev/null; then
        log "osd.$id is already running"
    else
        ceph-osd -c "$CONF" -i "$id" >>"$DIR/log/setup.log" 2>&1 || die "ceph-osd -i $id failed to start"
    fi
    wait_osd_state "$id" 1
    echo "ok: osd.$id started (up)"
}

write_conf() {
    local fsid=$1 p1=$2 p2=$3
    local size=1 min_size=1 block_size=8589934592 memory_target=1073741824
    if ((OSDS >= 3)); then
        size=3
        min_size=2
    fi
    if ((OSDS > 1)); then
        block_size=4294967296
        memory_target=536870912
    fi
    if [[ -n "${RBD_ROW_CEPH_OSD_GIB:-}" ]]; then
        block_size=$((RBD_ROW_CEPH_OSD_GIB << 30))
    fi
    cat >"$CONF" <<EOF
# Generated by tests/ceph/cluster.sh -- throwaway test cluster, do not use for data.
[global]
fsid = $fsid
mon initial members = a
mon host = [v2:127.0.0.1:$p2,v1:127.0.0.1:$p1]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false

auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false

run dir = $DIR/run
crash dir = $DIR/crash
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
mon cluster log file = $DIR/log/cluster.log
log to stderr = false
err to stderr = true

osd pool default size = $size
osd pool default min size = $min_size
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
osd crush chooseleaf type = 0
mon osd min down reporters = 1

[mon]
mon data = $DIR/\$name
admin socket = $DIR/run/\$name.asok

[mgr]
mgr data = $DIR/\$name
admin socket = $DIR/run/\$name.asok

[osd]
osd data = $DIR/\$name
admin socket = $DIR/run/\$name.asok
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $block_size
bluestore fsck on mkfs = false
osd memory target = $memory_target
osd max object size = 134217728

[client]
keyring = $DIR/keyring.\$name
admin socket = $DIR/run/\$name.\$pid.\$cctid.asok
EOF
}

start() {
    check_dir
    ensure_packages
    if all_running; then
        if [[ -n "${RBD_ROW_CEPH_OSDS:-}" && "$RBD_ROW_CEPH_OSDS" != "$OSDS" ]]; then
            echo "the cluster running in $DIR has $OSDS OSD(s), not RBD_ROW_CEPH_OSDS=$RBD_ROW_CEPH_OSDS; stop it first" >&2
            exit 2
        fi
        if [[ -n "${RBD_ROW_CEPH_OSD_GIB:-}" ]] &&
            ! grep -qx "bluestore block size = $((RBD_ROW_CEPH_OSD_GIB << 30))" "$CONF"; then
            log "warning: the running cluster's OSDs were not made with RBD_ROW_CEPH_OSD_GIB=$RBD_ROW_CEPH_OSD_GIB (stop it to change the size)"
        fi
        wait_healthy
        echo "ok: cluster already running in $DIR"
        return 0
    fi
    if [[ -e "$DIR" ]]; then
        log "removing stale cluster directory $DIR"
        stop_cluster
    fi
    set_osds "${RBD_ROW_CEPH_OSDS:-1}"
    mkdir -p "$DIR"/{run,log,crash}
    touch "$MARKER"
    echo "$OSDS" >"$OSDS_FILE"

    local fsid p1 p2
    fsid=$(uuidgen)
    p1=$(free_port)
    p2=$(free_port)
    while [[ "$p2" == "$p1" ]]; do p2=$(free_port); done
    write_conf "$fsid" "$p1" "$p2"
    log "starting cluster $fsid in $DIR (mon on 127.0.0.1 v2:$p2 v1:$p1, $OSDS OSD(s) of $(($(sed -n 's/^bluestore block size = //p' "$CONF") >> 30)) GiB)"

    # Keys: mon., client.admin, client.rbdrow (the latter registered later).
    ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$DIR/keyring.client.admin" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
    ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/keyring.client.admin" >/dev/null

    # Monitor.
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$p2,v1:127.0.0.1:$p1]" \
        "$DIR/monmap" >/dev/null
    mkdir -p "$DIR/mon.a"
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" \
        >>"$DIR/log/setup.log" 2>&1 || die "ceph-mon --mkfs failed"
    ceph-mon -c "$CONF" -i a >>"$DIR/log/setup.log" 2>&1 || die "ceph-mon failed to start"
    local i
    for ((i = 0; i < 30; i++)); do
        ceph_ mon stat >/dev/null 2>&1 && break
        sleep 0.5
    done
    ceph_ mon stat >/dev/null 2>&1 || die "monitor does not answer"

    # Manager.
    mkdir -p "$DIR/mgr.x"
    ceph_ auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
        -o "$DIR/mgr.x/keyring" >/dev/null 2>>"$DIR/log/setup.log" || die "mgr key"
    ceph-mgr -c "$CONF" -i x >>"$DIR/log/setup.log" 2>&1 || die "ceph-mgr failed to start"

    # OSDs, each on its own sparse bluestore block file; mkfs in parallel.
    local uuid id mkfs_pids=()
    for ((i = 0; i < OSDS; i++)); do
        uuid=$(uuidgen)
        id=$(ceph_ osd create "$uuid" 2>>"$DIR/log/setup.log") || die "ceph osd create failed"
        [[ "$id" == "$i" ]] || die "unexpected osd id '$id' (expected $i)"
        mkdir -p "$DIR/osd.$i"
        ceph-osd -c "$CONF" -i "$i" --mkfs --mkkey --no-mon-config --osd-uuid "$uuid" \
            >>"$DIR/log/setup.log" 2>&1 &
        mkfs_pids+=($!)
    done
    for ((i = 0; i < OSDS; i++)); do
        wait "${mkfs_pids[$i]}" || die "ceph-osd -i $i --mkfs failed"
    done
    for ((i = 0; i < OSDS; i++)); do
        ceph_ auth add "osd.$i" osd 'allow *' mon 'allow profile osd' mgr 'allow profile osd' \
            -i "$DIR/osd.$i/keyring" >/dev/null 2>>"$DIR/log/setup.log" || die "osd.$i key"
        ceph-osd -c "$CONF" -i "$i" >>"$DIR/log/setup.log" 2>&1 || die "ceph-osd -i $i failed to start"
    done

    # Pool and the restricted client.
    ceph_ osd pool create rbd 8 >/dev/null 2>>"$DIR/log/setup.log" || die "pool create failed"
    timeout 60 rbd -c "$CONF" pool init rbd >>"$DIR/log/setup.log" 2>&1 || die "rbd pool init failed"
    ceph_ auth get-or-create client.rbdrow mon 'profile rbd' osd 'profile rbd pool=rbd' \
        -o "$DIR/keyring.client.rbdrow" >/dev/null 2>>"$DIR/log/setup.log" || die "rbdrow key"
    chmod 600 "$DIR/keyring.client.rbdrow"

    wait_healthy
    echo "ok: cluster started in $DIR (${SECONDS}s)"
}

stop_cluster() {
    check_dir
    [[ -e "$DIR" ]] || return 0
    if [[ ! -f "$MARKER" ]]; then
        echo "$DIR exists but was not created by cluster.sh; not touching it" >&2
        exit 2
    fi
    kill_daemons
    rm -rf -- "$DIR"
}

print_env() {
    check_dir
    [[ -f "$CONF" ]] || { echo "no cluster in $DIR (run: $0 start)" >&2; exit 1; }
    echo "export CEPH_CONF=$CONF"
    echo "export RBD_ROW_CEPH_DIR=$DIR"
    echo "export RBD_ROW_CEPH_OSDS=$OSDS"
}

case "${1:-}" in
    start) start ;;
    stop)
        stop_cluster
        echo "ok: stopped"
        ;;
    env) print_env ;;
    status)
        check_dir
        ceph_ -s
        ;;
    wait)
        check_dir
        [[ -f "$MARKER" && -f "$CONF" ]] || { echo "no cluster in $DIR (run: $0 start)" >&2; exit 1; }
        wait_healthy
        echo "ok: healthy (${SECONDS}s)"
        ;;
    osd-stop) osd_stop "${2:-}" ;;
    osd-start) osd_start "${2:-}" ;;
    *)
        echo "usage: $0 start|stop|env|status|wait|osd-stop ID|osd-start ID" >&2
        exit 2
        ;;
esac
