#!/bin/bash
# The checks of tests/test_sdunits.c, run inside a guest that boots a real
# systemd as PID 1 (run-under-systemd) with mpool installed.  Prints one line
# per check, "PASS name: what was seen" or "FAIL name: what was seen", which
# the Check suite turns into one test case each.
#
# Usage: sdunits-guest.sh fast|slow
#   fast  activation, STATUS= at READY=1, the sandbox running a workload,
#         reload across a map and during long tasks, stop with a drain, a
#         config error, teardown (about 30 s)
#   slow  the two checks that wait for a 30 s timer: the watchdog, and a
#         stop whose drain times out (about 70 s)
# Environment: MPOOL_BINDIR (where mpctl is), MPOOL_CONF (mpoold.conf).
set -u
GROUP=${1:?fast or slow}
BINDIR=${MPOOL_BINDIR:?}
CONF=${MPOOL_CONF:?}
SOCK=/run/mpool/mpoold.sock
CG=/sys/fs/cgroup/system.slice/mpoold.service
T=$(mktemp -d /var/tmp/sdunits.XXXXXX)
export SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C.UTF-8

# An installed libmpool under /usr/local is found through the cache only.
ldconfig

pass() { echo "PASS $1: $2"; }
fail() { echo "FAIL $1: $2"; }
result() { if [ "$2" = 0 ]; then pass "$1" "$3"; else fail "$1" "$3"; fi; }
mp() { "$BINDIR/mpctl" -s "$SOCK" "$@"; }
prop() { systemctl show -P "$2" "$1"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
cursor() { journalctl --sync; journalctl -n 1 -o export | sed -n 's/^__CURSOR=//p'; }
# The journal of mpoold.service after a cursor, message text only.
jsince() { journalctl --sync; journalctl -q --no-pager -o cat -u mpoold --after-cursor="$1"; }
workers() { mp workers 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ { print $1 }' | sort -n | tr '\n' ' '; }
cg_pids() { tr '\n' ' ' <"$CG/cgroup.procs" 2>/dev/null; }
mpool_pids() { ps -u mpool -o pid= 2>/dev/null | tr -d ' ' | tr '\n' ' '; }
wait_for() { # wait_for SECONDS COMMAND...: poll every 0.1 s
	local n=$(($1 * 10)); shift
	while [ $n -gt 0 ]; do "$@" && return 0; sleep 0.1; n=$((n - 1)); done
	return 1
}
active_with_pid() { [ "$(prop mpoold ActiveState)" = active ] && [ "$(prop mpoold MainPID)" != 0 ]; }
all_idle() { prop mpoold StatusText | grep -Eq "^running; workers 0 busy, $(nproc) idle;"; }
common() { # the pids in both lists
	comm -12 <(echo "$1" | tr ' ' '\n' | sed '/^$/d' | sort) \
		<(echo "$2" | tr ' ' '\n' | sed '/^$/d' | sort) | tr '\n' ' '
}

echo "guest: $(systemctl --version | head -1), $(nproc) CPU(s), $GROUP checks"
if [ "${MPOOL_SANITIZED:-0}" = 1 ]; then
	# LeakSanitizer stops the world with ptrace, which the system-call
	# filter forbids; the rest of the sanitizers work in the sandbox.
	mkdir -p /etc/systemd/system/mpoold.service.d
	printf '[Service]\nEnvironment=ASAN_OPTIONS=detect_leaks=0\n' \
		>/etc/systemd/system/mpoold.service.d/50-sanitizer.conf
	systemctl daemon-reload
fi
systemctl enable --now mpoold.socket >"$T/enable.out" 2>&1 ||
	{ fail setup "systemctl enable --now mpoold.socket: $(cat "$T/enable.out")"; exit 1; }
cp "$CONF" "$T/mpoold.conf.orig"

fast() {
	# -- Activation by the first client, through the shipped units.
	local C0 out1 out2 log ok
	C0=$(cursor)
	out1=$(mp ping 2>&1) out2=$(mp apply builtin.square 7 2>&1)
	log=$(jsince "$C0")
	ok=1
	[ "$out1" = pong ] && [ "$out2" = 49 ] && active_with_pid &&
		[ "$(prop mpoold.socket SubState)" = running ] &&
		echo "$log" | grep -q "socket activation: serving $SOCK" && ok=0
	result activation $ok "ping -> '$out1', square 7 -> '$out2'; mpoold $(prop mpoold ActiveState), socket $(prop mpoold.socket SubState); log: $(echo "$log" | grep -m1 'socket activation')"

	# -- READY=1 carries a fresh STATUS=: when "systemctl start" returns,
	# systemctl status already counts every worker idle.
	local seen bad=0
	seen=
	for i in 1 2 3; do
		systemctl stop mpoold
		systemctl start mpoold
		s=$(prop mpoold StatusText)
		seen="$seen[$s] "
		echo "$s" | grep -Eq "^running; workers 0 busy, $(nproc) idle;" || bad=1
	done
	result ready-status $bad "StatusText right after each of 3 starts: $seen"
	# The checks' own restarts must not count toward the start limit of
	# the checks after them.
	systemctl reset-failed mpoold

	# -- The sandbox: every process of the unit is user mpool without
	# capabilities, under NoNewPrivs and seccomp; a workload runs through it.
	local uid procs n sbad sum spin sp w1 w2 victim wc r1 C1
	uid=$(id -u mpool)
	procs=$(cg_pids) sbad= n=0
	for p in $procs; do
		n=$((n + 1))
		s=$(awk '/^Uid:/ { u = $2 } /^CapEff:/ { c = $2 } /^NoNewPrivs:/ { nnp = $2 }
			/^Seccomp:/ { sc = $2 } END { print u, c, nnp, sc }' "/proc/$p/status" 2>/dev/null)
		[ "$s" = "$uid 0000000000000000 1 2" ] || sbad="$sbad $p($s)"
	done
	C1=$(cursor)
	sum=$(mp map --chunksize 7 builtin.square $(seq 1 200) 2>&1 | awk '{ s += $1 } END { print s }')
	spin=$(mp apply builtin.spin 50 2>&1)
	sp=$(mp spawn builtin.pid 0 2>&1 | tail -1)
	w1=$(workers)
	victim=${w1%% *}
	mp terminate --worker "$victim" >/dev/null 2>&1
	wait_for 10 sh -c "[ \$($BINDIR/mpctl -s $SOCK workers | awk 'NR > 1' | wc -l) -eq $(nproc) ] &&
		! $BINDIR/mpctl -s $SOCK workers | awk 'NR > 1 { print \$1 }' | grep -qx $victim"
	w2=$(workers)
	wc=$(find /usr/lib /usr/local/lib -path '*/mpool/wordcount.so' 2>/dev/null | head -1)
	r1=none
	if [ -n "$wc" ]; then
		printf '\n[module]\npath = %s\ninitargs = {"lowercase": true}\n' "$wc" >>"$CONF"
		systemctl restart mpoold
		r1=$(mp apply wordcount.total '"The cat saw THE dog"' 2>&1)
		cp "$T/mpoold.conf.orig" "$CONF"
		systemctl restart mpoold
		systemctl reset-failed mpoold
	fi
	errs=$(jsince "$C1" | grep -Ei 'not permitted|EPERM|bad system call|SIGSYS|denied|workers fork from the master')
	ok=1
	[ "$n" -ge $(($(nproc) + 2)) ] && [ -z "$sbad" ] && [ "$sum" = 2686700 ] && [ "$spin" = 50 ] &&
		echo "$sp" | grep -Eq '^[0-9]+$' && [ -n "$w2" ] && [ -z "$(common "$victim" "$w2")" ] &&
		{ [ -z "$wc" ] || [ "$r1" = 5 ]; } && [ -z "$errs" ] && ok=0
	result sandbox $ok "$n processes as uid mpool, no capabilities, NoNewPrivs, seccomp${sbad:+ (wrong:$sbad)}; map of 200 squares -> $sum, spin -> $spin, spawn -> $sp, worker $victim killed and replaced ($w1-> $w2), wordcount.so ${wc:-not installed} -> $r1${errs:+; journal: $errs}"

	# -- Reload across a map: nothing lost, every worker new, same master.
	local main mpid mrc rrc rel nres C2
	wait_for 10 all_idle
	main=$(prop mpoold MainPID) w1=$(workers)
	C2=$(cursor)
	mp map --chunksize 1 builtin.sleep $(yes 200 | head -20) >"$T/map.out" 2>"$T/map.err" &
	mpid=$!
	sleep 0.5
	systemctl reload mpoold
	rrc=$?
	wait $mpid
	mrc=$?
	w2=$(workers)
	nres=$(grep -c '^200$' "$T/map.out")
	log=$(jsince "$C2")
	ok=1
	[ $rrc = 0 ] && [ $mrc = 0 ] && [ "$nres" = 20 ] && [ -n "$w2" ] && [ -z "$(common "$w1" "$w2")" ] &&
		[ "$(prop mpoold MainPID)" = "$main" ] && echo "$log" | grep -q 'reload complete' && ok=0
	result reload-map $ok "reload rc=$rrc during a 20 x 200 ms map: map rc=$mrc, $nres/20 results; workers $w1-> $w2; MainPID $main -> $(prop mpoold MainPID)"

	# -- A reload during tasks longer than TimeoutStartSec= succeeds: it is
	# done when new work goes to new workers; the old ones finish behind.
	local t pid_new old_left
	mkdir -p /run/systemd/system/mpoold.service.d
	printf '[Service]\nTimeoutStartSec=3s\n' >/run/systemd/system/mpoold.service.d/50-test.conf
	systemctl daemon-reload
	wait_for 10 all_idle
	w1=$(workers)
	mp map --chunksize 1 builtin.sleep 8000 8000 >"$T/map.out" 2>"$T/map.err" &
	mpid=$!
	two_busy() { prop mpoold StatusText | grep -q '^running; workers 2 busy'; }
	wait_for 5 two_busy
	t=$(now)
	rout=$(systemctl reload mpoold 2>&1)
	rrc=$?
	rel=$(since "$t")
	# New work, while the old workers still sleep, runs on a new one.
	pid_new=$(mp apply builtin.pid 0 2>&1)
	old_left=$(common "$w1" "$(cg_pids)")
	wait $mpid
	mrc=$?
	nres=$(grep -c '^8000$' "$T/map.out")
	rr=$(prop mpoold ReloadResult)
	rm -r /run/systemd/system/mpoold.service.d
	systemctl daemon-reload
	old_gone() { [ -z "$(common "$w1" "$(cg_pids)")" ]; }
	wait_for 10 old_gone
	ok=1
	[ $rrc = 0 ] && [ "$rr" = success ] && awk -v e="$rel" 'BEGIN { exit !(e < 3) }' &&
		[ $mrc = 0 ] && [ "$nres" = 2 ] && echo "$pid_new" | grep -Eq '^[0-9]+$' &&
		[ -z "$(common "$w1" "$pid_new")" ] && [ -n "$old_left" ] && ok=0
	result reload-long-task $ok "TimeoutStartSec=3s, reload during 2 x 8 s tasks: rc=$rrc after ${rel}s ($(echo "$rout" | head -1)), ReloadResult=$rr; new apply ran on $pid_new (old workers: $w1, still running then: ${old_left:-none}); map rc=$mrc, $nres/2 results"

	# -- Stop with a drain that fits: the map finishes, exit 0, no SIGKILL,
	# nothing left, the socket keeps listening.
	local src sel left C3
	wait_for 10 all_idle
	C3=$(cursor)
	mp map --chunksize 1 builtin.sleep $(yes 500 | head -12) >"$T/map.out" 2>"$T/map.err" &
	mpid=$!
	sleep 0.7
	t=$(now)
	systemctl stop mpoold
	src=$?
	sel=$(since "$t")
	wait $mpid
	mrc=$?
	nres=$(grep -c '^500$' "$T/map.out")
	log=$(jsince "$C3")
	left="$(cg_pids)$(mpool_pids)"
	ok=1
	[ $src = 0 ] && [ $mrc = 0 ] && [ "$nres" = 12 ] && [ "$(prop mpoold Result)" = success ] &&
		[ "$(prop mpoold ExecMainStatus)" = 0 ] && [ "$(prop mpoold ActiveState)" = inactive ] &&
		! echo "$log" | grep -qE 'Killing process|timed out|SIGKILL' && [ -z "$left" ] &&
		[ "$(prop mpoold.socket SubState)" = listening ] && [ -S "$SOCK" ] && ok=0
	result stop-drain $ok "stop during a 12 x 500 ms map: ${sel}s, map rc=$mrc, $nres/12 results, $(prop mpoold ActiveState) Result=$(prop mpoold Result) status $(prop mpoold ExecMainStatus), leftover: ${left:-none}, socket $(prop mpoold.socket SubState)"

	# -- A config error: the client is told file:line, mpoold exits 2 after
	# one start, and the socket survives.
	local C4 nr out line starts st
	echo 'no-such-key = 1' >>"$CONF"
	line=$(wc -l <"$CONF")
	C4=$(cursor)
	nr=$(prop mpoold NRestarts)
	out=$(mp ping 2>&1)
	wait_for 10 sh -c "[ \"\$(systemctl show -P ActiveState mpoold)\" = failed ]"
	log=$(jsince "$C4")
	starts=$(echo "$log" | grep -c '^Starting mpoold.service')
	st=$(systemctl status mpoold --no-pager -n 20 2>&1)
	ok=1
	echo "$out" | grep -q "unavailable: .*$CONF:$line: unknown key 'no-such-key'" &&
		[ "$(prop mpoold ExecMainStatus)" = 2 ] && [ "$(prop mpoold NRestarts)" = "$nr" ] &&
		[ "$starts" = 1 ] && [ "$(prop mpoold.socket ActiveState)" = active ] && [ -S "$SOCK" ] &&
		echo "$st" | grep -q "$CONF:$line: unknown key 'no-such-key'" && ok=0
	result config-error $ok "client: '$out'; mpoold $(prop mpoold ActiveState), status $(prop mpoold ExecMainStatus), NRestarts $nr -> $(prop mpoold NRestarts), $starts start(s); socket $(prop mpoold.socket ActiveState), $SOCK $([ -S $SOCK ] && echo present || echo gone); systemctl status: $(echo "$st" | grep -m1 "unknown key")"

	# The error line is the journal's, not "mpoold: mpoold: ...".
	local eline
	eline=$(journalctl -q -o short -u mpoold --after-cursor="$C4" | grep -m1 'unknown key')
	ok=1
	echo "$eline" | grep -q "mpoold\[[0-9]*\]: $CONF:$line: unknown key" &&
		! echo "$eline" | grep -q 'mpoold: mpoold:' && ok=0
	result config-error-log $ok "journal: $eline"

	# Clients that keep coming, one every 0.6 s for 9 s, each told the same,
	# and a burst of 8 at once: the start limit never fails the socket.
	local nok=0 nclients=0 burst
	for i in $(seq 1 15); do
		nclients=$((nclients + 1))
		mp ping 2>&1 | grep -q "$CONF:$line: unknown key" && nok=$((nok + 1))
		sleep 0.6
	done
	for i in $(seq 1 8); do mp ping >"$T/burst.$i" 2>&1 & done
	wait
	burst=$(cat "$T"/burst.* | grep -c "$CONF:$line: unknown key")
	ok=1
	[ "$nok" = "$nclients" ] && [ "$burst" = 8 ] && [ "$(prop mpoold.socket ActiveState)" = active ] &&
		[ -S "$SOCK" ] && ok=0
	result config-error-clients $ok "$nok/$nclients clients 0.6 s apart and $burst/8 at once got the error; socket $(prop mpoold.socket ActiveState) ($(prop mpoold.socket Result)), NRestarts $(prop mpoold NRestarts)"

	# Fixed: the next client works without touching the socket unit, and
	# so does a restart.
	local p1 p2
	cp "$T/mpoold.conf.orig" "$CONF"
	wait_for 5 sh -c "[ \"\$(systemctl show -P ActiveState mpoold)\" != activating ]"
	p1=$(mp ping 2>&1)
	systemctl restart mpoold
	p2=$(mp apply builtin.square 9 2>&1)
	ok=1
	[ "$p1" = pong ] && [ "$p2" = 81 ] && active_with_pid && ok=0
	result config-fixed $ok "after fixing the file: next client -> '$p1', after systemctl restart: square 9 -> '$p2'; mpoold $(prop mpoold ActiveState)"

	# -- Teardown: nothing left.
	systemctl stop mpoold.socket mpoold.service
	wait_for 10 sh -c "[ -z \"\$(ps -u mpool -o pid= 2>/dev/null)\" ]"
	left="$(cg_pids)$(mpool_pids)"
	ok=1
	[ ! -e "$SOCK" ] && [ -z "$left" ] && [ ! -d "$CG" ] && ok=0
	result teardown $ok "after stopping both units: $SOCK $([ -e $SOCK ] && echo present || echo removed), processes of mpool: ${left:-none}"
}

slow() {
	# -- The watchdog (WatchdogSec=30s): a stopped master is killed and
	# restarted, its processes go with it.
	local m old nr t el stale pong ok C0
	mp ping >/dev/null 2>&1
	wait_for 10 active_with_pid
	m=$(prop mpoold MainPID) old=$(cg_pids) nr=$(prop mpoold NRestarts)
	C0=$(cursor)
	kill -STOP "$m"
	t=$(now)
	restarted() { active_with_pid && [ "$(prop mpoold MainPID)" != "$m" ]; }
	wait_for 50 restarted
	el=$(since "$t")
	stale=
	for p in $old; do
		[ -d "/proc/$p" ] && [ "$(stat -c %U "/proc/$p")" = mpool ] && stale="$stale $p"
	done
	pong=$(mp ping 2>&1)
	ok=1
	restarted && [ "$(prop mpoold NRestarts)" = $((nr + 1)) ] && [ -z "$stale" ] && [ "$pong" = pong ] &&
		jsince "$C0" | grep -q 'Watchdog timeout' &&
		awk -v e="$el" 'BEGIN { exit !(e >= 25 && e <= 40) }' && ok=0
	result watchdog $ok "SIGSTOP of master $m: new master $(prop mpoold MainPID) after ${el}s, NRestarts $nr -> $(prop mpoold NRestarts), old processes left:${stale:- none}, ping -> $pong"

	# -- A stop whose drain (30 s) times out: the rest is terminated, mpoold
	# exits 3 before TimeoutStopSec=, the unit is inactive, not failed, and
	# the journal has a warning.
	local mpid mrc src sel left log res warn
	wait_for 10 all_idle
	C0=$(cursor)
	mp map --chunksize 1 builtin.sleep 40000 40000 >"$T/map.out" 2>"$T/map.err" &
	mpid=$!
	sleep 0.5
	t=$(now)
	systemctl stop mpoold
	src=$?
	sel=$(since "$t")
	wait $mpid
	mrc=$?
	log=$(jsince "$C0")
	left="$(cg_pids)$(mpool_pids)"
	res="$(prop mpoold ActiveState) Result=$(prop mpoold Result) status $(prop mpoold ExecMainStatus)"
	journalctl --sync
	warn=$(journalctl -q -o cat -u mpoold -p warning --after-cursor="$C0" | grep -m1 'exited: the drain timed out')
	ok=1
	[ $src = 0 ] && awk -v e="$sel" 'BEGIN { exit !(e < 45) }' && [ $mrc != 0 ] &&
		grep -q terminated "$T/map.err" && [ "$res" = "inactive Result=success status 3" ] &&
		! echo "$log" | grep -qE 'Killing process|stop-sigterm timed out|SIGKILL' &&
		[ -z "$left" ] && [ -n "$warn" ] && ok=0
	result stop-drain-timeout $ok "stop during 2 x 40 s tasks: ${sel}s, mpoold.service $res, leftover: ${left:-none}, client: $(head -1 "$T/map.err"), warning: ${warn:-none}"
}

"$GROUP"
rm -rf "$T"
echo "guest: done"
